"""A host app for ``flask --app tests.worker_host:create_app webhooks worker`` processes: the
database comes from ``KWT_DATABASE_URI``, the settings are the delivery tests' plus the JSON of
``KWT_CONFIG``. Its web side sends nothing (``KAIZEN_WEBHOOKS_EXECUTOR = "none"``): the workers
do."""

from __future__ import annotations

import json
import logging
import os

from flask import Flask

from flask_kaizen_webhooks import KaizenWebhooks
from tests.conftest import DELIVERY_CONFIG
from tests.processes import note_deliveries


def create_app() -> Flask:
    logging.basicConfig(level=logging.INFO, format="[%(process)d] %(name)s: %(message)s")
    app = Flask("worker_host")
    app.config.update(
        SECRET_KEY="test-secret-key",
        KAIZEN_WEBHOOKS_DATABASE_URI=os.environ["KWT_DATABASE_URI"],
        KAIZEN_WEBHOOKS_EXECUTOR="none",
        **DELIVERY_CONFIG,
    )
    app.config.update(json.loads(os.environ.get("KWT_CONFIG", "{}")))
    KaizenWebhooks(app)
    note_deliveries(app)
    return app
