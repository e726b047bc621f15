"""A host app on the Celery executor, as a Flask shop sets one up (Flask's ``celery_init_app``
pattern): the test process builds it to fire events, and Celery worker processes load it with
``celery -A tests.celery_host:celery_app worker``. Its settings come from the environment, so
that both sides share the database, the broker and the queue of one test."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from flask import Flask

from example_app.celery_setup import celery_init_app
from flask_kaizen_webhooks import KaizenWebhooks
from tests.conftest import DELIVERY_CONFIG, install_demo_auth
from tests.processes import note_deliveries


def create_app() -> Flask:
    """The host app, configured from ``KWT_*`` environment variables."""
    return create_host()[0]


def create_host() -> tuple[Flask, KaizenWebhooks]:
    """The host app and its extension."""
    app = Flask("celery_host")
    app.config.update(
        SECRET_KEY="test-secret-key",
        KAIZEN_WEBHOOKS_DATABASE_URI=os.environ["KWT_DATABASE_URI"],
        KAIZEN_WEBHOOKS_EXECUTOR="celery",
        KAIZEN_WEBHOOKS_CELERY_SWEEP_INTERVAL=float(os.environ.get("KWT_SWEEP", "60")),
        CELERY={
            "broker_url": os.environ["KWT_BROKER"],
            "task_default_queue": os.environ["KWT_QUEUE"],
            "task_ignore_result": True,
            "broker_connection_retry_on_startup": True,
        },
        **DELIVERY_CONFIG,
    )
    app.config.update(json.loads(os.environ.get("KWT_CONFIG", "{}")))
    celery_init_app(app)
    webhooks = KaizenWebhooks(app)
    install_demo_auth(webhooks)
    note_deliveries(app)
    return app, webhooks


def note_tasks() -> None:
    """With ``KWT_TASKS`` set (a file's path): each task this worker process runs appends
    ``<pid> <time.time()> <task name>`` to that file, so that a test tells which worker took
    tasks when."""
    path = os.environ.get("KWT_TASKS")
    if not path:
        return
    from celery.signals import task_prerun

    lock = threading.Lock()

    def noted(task: Any, **_fields: Any) -> None:
        with lock, open(path, "a") as notes:
            notes.write(f"{os.getpid()} {time.time()} {task.name}\n")

    task_prerun.connect(noted, weak=False)


if "KWT_DATABASE_URI" in os.environ:
    flask_app = create_app()
    celery_app = flask_app.extensions["celery"]
    note_tasks()
