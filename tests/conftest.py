"""Shared fixtures: a fresh app per test on each storage backend, real SQLite files and the real
PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from flask_kaizen_webhooks import KaizenWebhooks, get_state
from flask_kaizen_webhooks.clock import Clock
from flask_kaizen_webhooks.storage import migrations
from tests import clients
from tests.migrating import empty

REQUIRE_SERVICES = os.environ.get("KAIZEN_WEBHOOKS_REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get(
    "KAIZEN_WEBHOOKS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

#: Demo API users: token -> (owner id, may manage web hooks).
USERS = {
    "admin-token": ("org-1", True),
    "other-admin-token": ("org-2", True),
    "user-token": ("org-1-user", False),
}
ADMIN = {"Authorization": "Bearer admin-token"}
OTHER_ADMIN = {"Authorization": "Bearer other-admin-token"}
USER = {"Authorization": "Bearer user-token"}


@pytest.fixture(autouse=True)
def _stop_clients() -> Iterator[None]:
    """Every HTTP client a test made (see :mod:`tests.clients`) is stopped after it."""
    yield
    clients.stop_all()


#: Storage backends: (database server, whether the extension shares the host's Flask-SQLAlchemy).
BACKENDS = {
    "sqlite": ("sqlite", False),
    "sqlite-hostdb": ("sqlite", True),
    "postgres": ("postgres", False),
    "postgres-hostdb": ("postgres", True),
}


def service_unavailable(message: str) -> None:
    """Skip, or fail when CI requires the services."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (KAIZEN_WEBHOOKS_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, dropped at the end."""
    admin_url = make_url(POSTGRES_URL)
    try:
        # Pinged before use: the server may have been restarted meanwhile (see
        # tests/test_service_restarts.py).
        admin = create_engine(
            admin_url,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 3},
            pool_pre_ping=True,
        )
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        service_unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    name = f"kaizen_webhooks_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database without any table, on each server in turn: a new SQLite file, or
    the session's PostgreSQL database emptied of what the migration tests make."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    empty(url)
    yield url
    empty(url)


@dataclass
class Host:
    """A host app built for one test, with its extension and (maybe) its own ``db``."""

    app: Flask
    webhooks: KaizenWebhooks
    db: SQLAlchemy | None


def install_demo_auth(webhooks: KaizenWebhooks) -> None:
    """Bearer-token users as in :data:`USERS`."""

    @webhooks.user_loader
    def load_user() -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        user = USERS.get(token) if scheme == "Bearer" else None
        return None if user is None else token

    @webhooks.permission_checker
    def may_manage(token: str) -> bool:
        return USERS[token][1]

    @webhooks.owner_key
    def owner(token: str) -> str:
        return USERS[token][0]


@pytest.fixture
def make_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Host]]:
    """Build fresh host apps: ``make_host(backend, auth=True, **config)``."""
    built: list[Host] = []

    def build(
        backend: str = "sqlite", *, auth: bool = True, keep_tables: bool = False, **config: Any
    ) -> Host:
        server, shared = BACKENDS[backend]
        if server == "postgres":
            url = request.getfixturevalue("postgres_url")
            if not keep_tables:
                engine = create_engine(url)
                migrations.drop_all(engine)
                engine.dispose()
        else:
            url = f"sqlite:///{tmp_path / f'app{len(built)}.sqlite3'}"
        app = Flask(f"host_{len(built)}", instance_path=str(tmp_path / f"instance{len(built)}"))
        app.config.update(TESTING=True, SECRET_KEY="test-secret-key")
        app.config.update(config)
        db: SQLAlchemy | None = None
        if shared:
            app.config.setdefault("SQLALCHEMY_DATABASE_URI", url)
            db = SQLAlchemy()
            db.init_app(app)
        else:
            app.config.setdefault("KAIZEN_WEBHOOKS_DATABASE_URI", url)
        webhooks = KaizenWebhooks(app, db=db)
        if auth:
            install_demo_auth(webhooks)
        host = Host(app, webhooks, db)
        built.append(host)
        return host

    yield build
    for host in built:
        with host.app.app_context():
            get_state(host.app).shutdown(timeout=10)
            get_state(host.app).database.dispose()
            if host.db is not None:
                host.db.session.remove()
                host.db.engine.dispose()


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """Every storage backend in turn."""
    return str(request.param)


@pytest.fixture
def host(make_host: Callable[..., Host], backend: str) -> Host:
    return make_host(backend)


@pytest.fixture
def app(host: Host) -> Flask:
    """The app pytest-flask's ``client`` fixture uses."""
    return host.app


@dataclass(frozen=True)
class Served:
    """Where a live server listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture
def serve() -> Iterator[Callable[[Any], Served]]:
    """Serve a WSGI app on 127.0.0.1 in a thread, for tests that need a real HTTP server."""
    import threading

    from werkzeug.serving import make_server

    servers: list[Any] = []

    def start(wsgi_app: Any) -> Served:
        server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Served("127.0.0.1", server.server_port)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 held bound but not listening for the test: connections are refused.

    Holding it keeps any server the test starts from being given the same port.
    """
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Callable[..., Any]]:
    """Start real receivers on 127.0.0.1: ``receiver(responder=None)``."""
    from tests.receivers import Receiver

    started: list[Receiver] = []

    def start(responder: Any = None) -> Receiver:
        server = Receiver(responder)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


#: Settings for delivery tests: loopback receivers over http, fast polling, short retries.
DELIVERY_CONFIG: dict[str, Any] = {
    "KAIZEN_WEBHOOKS_ALLOW_HTTP": True,
    "KAIZEN_WEBHOOKS_ALLOWED_NETWORKS": ["127.0.0.1/32"],
    "KAIZEN_WEBHOOKS_POLL_INTERVAL": 0.05,
    "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [0.05, 0.05],
    "KAIZEN_WEBHOOKS_RETRY_JITTER": 0.0,
    "KAIZEN_WEBHOOKS_WORKERS": 4,
    # The caps the delivery tests count against (the defaults are higher).
    "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 2,
    "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST": 4,
}


def register(
    host: Host,
    url: str,
    topic: str = "profile_updated",
    secret: str = "signature_secret_0123",
    headers: dict[str, str] = ADMIN,
) -> dict[str, str]:
    """Register ``url`` through the API; the new registration's id and rev."""
    response = host.app.test_client().post(
        "/v2/webhooks/registrations",
        json={"topic": topic, "url": url, "secret": secret},
        headers=headers,
    )
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


class FrozenClock(Clock):
    """A clock stopped at ``at`` (epoch seconds) until moved with :meth:`advance`."""

    def __init__(self, at: float) -> None:
        self.at = at

    def time(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds
