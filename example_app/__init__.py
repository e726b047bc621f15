"""A small host application that shows how to wire flask-kaizen-webhooks into a Flask app.

Run it with ``make demo`` (or ``python -m example_app --port 5000``). Its SQLite database lives in
the instance folder; two demo API users are seeded:

* ``Authorization: Bearer admin-token`` may manage web hooks;
* ``Authorization: Bearer user-token`` may not.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_kaizen_webhooks import KaizenWebhooks


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
webhooks = KaizenWebhooks(db=db)

DEMO_USERS = (
    # (id, name, token, may manage web hooks)
    ("org-admin", "Demo integrator", "admin-token", True),
    ("org-user", "Demo user without the permission", "user-token", False),
)


class ApiUser(db.Model):  # type: ignore[name-defined,misc]
    """An API user of the host, authenticated by a bearer token."""

    __tablename__ = "api_users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token: Mapped[str] = mapped_column(String(200), unique=True)
    can_manage_webhooks: Mapped[bool] = mapped_column(default=False)


def create_app(config: dict[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    """Build the demo host app; ``config`` overrides the defaults (tests pass their own)."""
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("SECRET_KEY", "demo-only-secret-key-change-me"),
        SQLALCHEMY_DATABASE_URI="sqlite:///"
        + os.path.join(app.instance_path, "example_app.sqlite3"),
        # The demo's receiver runs on this machine over plain http.
        KAIZEN_WEBHOOKS_ALLOW_HTTP=True,
    )
    app.config.from_mapping(config or {})
    db.init_app(app)
    webhooks.init_app(app)
    with app.app_context():
        db.create_all()
        _seed_demo_users()
    return app


def _seed_demo_users() -> None:
    for user_id, name, token, may_manage in DEMO_USERS:
        if db.session.get(ApiUser, user_id) is None:
            db.session.add(
                ApiUser(id=user_id, name=name, token=token, can_manage_webhooks=may_manage)
            )
    db.session.commit()


@webhooks.user_loader
def load_api_user() -> ApiUser | None:
    """The API user named by the request's bearer token, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    user: ApiUser | None = db.session.scalar(select(ApiUser).where(ApiUser.token == token))
    return user


@webhooks.permission_checker
def may_manage_webhooks(user: ApiUser) -> bool:
    """The host's "Allow user to manage web hooks" permission."""
    return user.can_manage_webhooks
