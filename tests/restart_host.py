"""A host app wired from the public API only, as a Flask shop writes one from the quickstart:
its database comes from ``KWT_DATABASE_URI`` (more settings, as JSON, from ``KWT_CONFIG``);
``POST /fire?n=N`` commits N profile changes, each with its ``profile_updated`` webhook in the
same transaction."""

from __future__ import annotations

import json
import logging
import os

from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import func, select

from flask_kaizen_webhooks import KaizenWebhooks, signals
from tests.processes import note_deliveries

logging.basicConfig(level=logging.INFO, format="[%(process)d] %(name)s: %(message)s")

db = SQLAlchemy()
webhooks = KaizenWebhooks(db=db)


class Change(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "restart_host_changes"
    id = db.Column(db.Integer, primary_key=True)
    n = db.Column(db.Integer)


#: The host's advisory lock while it makes its tables (PostgreSQL).
TABLES_LOCK = 0x686F73747461626C


def create_tables() -> None:
    """The host's own tables, one process at a time: a pre-forking server's workers (gunicorn
    without ``--preload``) start together, and two ``CREATE TABLE`` of one table fail one. The
    extension makes its own tables on first use, taking turns with every process."""
    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(TABLES_LOCK)))
        db.metadata.create_all(connection, tables=[Change.__table__])


def create_app() -> Flask:
    app = Flask("restart_host")
    app.config.update(
        SECRET_KEY="restart-host-secret-key",
        SQLALCHEMY_DATABASE_URI=os.environ["KWT_DATABASE_URI"],
        KAIZEN_WEBHOOKS_ALLOW_HTTP=True,
        KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.1/32"],
    )
    app.config.update(json.loads(os.environ.get("KWT_CONFIG", "{}")))
    db.init_app(app)
    webhooks.init_app(app)
    app.add_url_rule("/metrics", view_func=webhooks.metrics_view)
    note_deliveries(app)
    with app.app_context():
        create_tables()

    @app.post("/fire")
    def fire() -> object:
        for n in range(int(request.args["n"])):
            db.session.add(Change(n=n))
            signals.profile_updated.send(app, payload={"n": n})
            db.session.commit()
        return jsonify(fired=int(request.args["n"]))

    return app


@webhooks.user_loader
def load_user() -> str | None:
    return "integrator" if request.headers.get("Authorization") == "Bearer admin-token" else None


@webhooks.permission_checker
def may_manage(user: str) -> bool:
    return True


app = create_app()
