"""The host's extension objects, created once and bound to the app in ``create_app``."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

from flask_kaizen_webhooks import KaizenWebhooks


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
#: The extension shares the host's database: outbox rows commit with the host's changes.
webhooks = KaizenWebhooks(db=db)
