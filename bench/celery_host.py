"""The benchmark's host app on the Celery executor, loaded by its Celery worker processes
(``celery -A bench.celery_host:celery_app worker``); settings from ``BENCH_*`` variables."""

from __future__ import annotations

import json
import os

from flask import Flask

from example_app.celery_setup import celery_init_app
from flask_kaizen_webhooks import KaizenWebhooks


def create_app() -> Flask:
    app = Flask("bench_celery", instance_path=os.environ["BENCH_INSTANCE"])
    app.config.update(
        SECRET_KEY="bench",
        KAIZEN_WEBHOOKS_DATABASE_URI=os.environ["BENCH_DATABASE_URI"],
        KAIZEN_WEBHOOKS_EXECUTOR="celery",
        KAIZEN_WEBHOOKS_ALLOW_HTTP=True,
        KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.1/32"],
        KAIZEN_WEBHOOKS_POLL_INTERVAL=0.05,  # as the in-process rows
        # Caps for receivers known to be fast, when a row asks for them (see ``bench``).
        **json.loads(os.environ.get("BENCH_CONFIG", "{}")),
        CELERY={
            "broker_url": os.environ["BENCH_BROKER"],
            "task_default_queue": os.environ["BENCH_QUEUE"],
            "task_ignore_result": True,
        },
    )
    celery_init_app(app)
    KaizenWebhooks(app)
    return app


if "BENCH_DATABASE_URI" in os.environ:
    flask_app = create_app()
    celery_app = flask_app.extensions["celery"]
