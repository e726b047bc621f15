"""A small host application that shows how to wire flask-kaizen-webhooks into a Flask app.

Run it with ``make demo`` (or ``python -m example_app --port 5000``). Its SQLite database lives in
the instance folder; two demo API users are seeded:

* ``Authorization: Bearer admin-token`` may manage web hooks and edit profiles and bookings;
* ``Authorization: Bearer user-token`` may only read them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from flask_kaizen_webhooks import ApiError

from .extensions import db, webhooks
from .models import ApiUser
from .views import api_user, host

logger = logging.getLogger("example_app")

DEMO_USERS = (
    # (id, name, token, may manage web hooks, may edit profiles and bookings)
    ("org-admin", "Demo integrator", "admin-token", True, True),
    ("org-user", "Demo user without the permission", "user-token", False, False),
)


def create_app(config: dict[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    """Build the demo host app; ``config`` overrides the defaults (tests pass their own)."""
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("SECRET_KEY", "demo-only-secret-key-change-me"),
        SQLALCHEMY_DATABASE_URI="sqlite:///"
        + os.path.join(app.instance_path, "example_app.sqlite3"),
        # Demo mode: the example receiver runs on this machine over plain http.
        KAIZEN_WEBHOOKS_ALLOW_HTTP=True,
        KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.0/8", "::1/128"],
        # The integrator portal, at /v2/webhooks/portal (on by default; False turns it off).
        KAIZEN_WEBHOOKS_PORTAL=True,
    )
    app.config.from_mapping(config or {})
    if app.config["KAIZEN_WEBHOOKS_ALLOW_HTTP"]:
        logger.warning(
            "DEMO MODE: webhooks may go to plain http:// URLs on this machine (%s). "
            "Never run a production host like this.",
            ", ".join(app.config["KAIZEN_WEBHOOKS_ALLOWED_NETWORKS"]),
        )
    db.init_app(app)
    webhooks.init_app(app)
    # Prometheus metrics (with the [metrics] extra; without it, a 501 saying what to install).
    app.add_url_rule("/metrics", view_func=webhooks.metrics_view)
    app.register_blueprint(host)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    with app.app_context():
        db.create_all()
        _seed_demo_users()
    return app


def _api_error(error: ApiError) -> tuple[Response, int, dict[str, str]]:
    db.session.rollback()
    return jsonify(error.to_dict()), error.code, error.extra_headers


def _http_error(error: HTTPException) -> tuple[Response, int]:
    code = (error.name or "error").lower().replace(" ", "_")
    body = {"code": code, "message": error.description, "field": None}
    return jsonify(error=body), error.code or 500


def _seed_demo_users() -> None:
    for user_id, name, token, may_manage, is_admin in DEMO_USERS:
        if db.session.get(ApiUser, user_id) is None:
            db.session.add(
                ApiUser(
                    id=user_id,
                    name=name,
                    token=token,
                    can_manage_webhooks=may_manage,
                    is_admin=is_admin,
                )
            )
    db.session.commit()


@webhooks.user_loader
def load_api_user() -> ApiUser | None:
    """The API user of the current request (the same bearer tokens as the host's API)."""
    return api_user()


@webhooks.permission_checker
def may_manage_webhooks(user: ApiUser) -> bool:
    """The host's "Allow user to manage web hooks" permission."""
    return user.can_manage_webhooks
