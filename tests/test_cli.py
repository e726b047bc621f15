"""Operator commands run the way operators run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import DELIVERY_CONFIG, register
from tests.receivers import wait_until


def test_worker_process_sends_the_outbox_and_stops_on_sigterm(
    make_host: Any, receiver: Any, tmp_path: Path
) -> None:
    server = receiver()
    writer = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_DISPATCHER="none")
    register(writer, server.url())
    database = writer.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    with writer.app.app_context():
        ids = [writer.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(5)]
    (tmp_path / "worker_app.py").write_text(
        textwrap.dedent(
            f"""
            from flask import Flask
            from flask_kaizen_webhooks import KaizenWebhooks

            app = Flask(__name__)
            app.config.update(SECRET_KEY="k", KAIZEN_WEBHOOKS_DATABASE_URI={database!r},
                              KAIZEN_WEBHOOKS_POLL_INTERVAL=0.05)
            KaizenWebhooks(app)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "worker_app", "webhooks", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        server.wait_for(5, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Stopped" in output
    with writer.app.app_context():
        from sqlalchemy import select

        from flask_kaizen_webhooks import get_state
        from flask_kaizen_webhooks.models import Delivery

        def all_succeeded() -> bool:
            with get_state().database.independent_session() as session:
                statuses = session.scalars(select(Delivery.status).where(Delivery.id.in_(ids)))
                return set(statuses) == {"succeeded"}

        wait_until(all_succeeded)
