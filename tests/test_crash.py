"""A worker process killed with SIGKILL mid-delivery loses nothing: after a restart every
delivery arrives at least once. Duplicates (expected: at-least-once) are counted and reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import jose.jws
import pytest
from sqlalchemy import func, select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import DELIVERY_CONFIG, register
from tests.receivers import Reply, wait_until

DELIVERIES = 300


def start_worker(tmp_path: Path, database: str) -> subprocess.Popen[str]:
    (tmp_path / "crash_worker.py").write_text(
        textwrap.dedent(
            f"""
            from flask import Flask
            from flask_kaizen_webhooks import KaizenWebhooks

            app = Flask(__name__)
            app.config.update(
                SECRET_KEY="test-secret-key",
                KAIZEN_WEBHOOKS_DATABASE_URI={database!r},
                KAIZEN_WEBHOOKS_POLL_INTERVAL=0.05,
                KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.1/32"],
                KAIZEN_WEBHOOKS_ASYNC_TIMEOUT=2,
                KAIZEN_WEBHOOKS_CONNECT_TIMEOUT=0.5,
                KAIZEN_WEBHOOKS_CLAIM_LEASE=3,
                KAIZEN_WEBHOOKS_WORKERS=8,
                KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION=8,
                KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST=8,
            )
            KaizenWebhooks(app)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "crash_worker", "webhooks", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_mid_delivery_loses_nothing(
    make_host: Any, receiver: Any, tmp_path: Path, backend: str
) -> None:
    server = receiver(lambda request, n: Reply(delay=0.02))
    writer = make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(writer, server.url())
    database = writer.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    with writer.app.app_context():
        ids = [writer.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(DELIVERIES)]

    first = start_worker(tmp_path, database)
    try:
        server.wait_for(DELIVERIES // 3, timeout=60)
    finally:
        first.send_signal(signal.SIGKILL)  # no clean shutdown: claims are left behind
        first.wait(10)
    killed_after = len(server.received)
    assert killed_after < DELIVERIES, "the worker finished before it could be killed"

    second = start_worker(tmp_path, database)
    try:
        # Those the killed worker was sending come back once their claims' leases run out.
        wait_until(lambda: statuses(writer) == {"succeeded": DELIVERIES}, timeout=90)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    received = Counter(request_ids(server))
    assert set(received) == set(ids)
    duplicates = {rid: n for rid, n in received.items() if n > 1}
    print(
        f"\n[{backend}] killed after {killed_after} requests; {DELIVERIES} deliveries arrived, "
        f"{len(duplicates)} of them twice or more (at-least-once)"
    )
    assert second.returncode == 0


def statuses(host: Any) -> dict[str, int]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        return {status: count for status, count in rows}


def request_ids(server: Any) -> list[str]:
    return [
        json.loads(jose.jws.get_unverified_claims(r.body.decode()))["webhook_request_id"]
        for r in list(server.received)
    ]
