"""Where the extension's tables live: the host's Flask-SQLAlchemy database or an embedded one."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from flask import Flask
from flask.globals import app_ctx
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.pool import StaticPool

from ..config import Settings
from . import migrations
from .tables import metadata

logger = logging.getLogger("flask_kaizen_webhooks")


class Database:
    """The engine and session the extension uses for one app.

    With a host ``db``, the tables join the host's metadata and every write goes through the
    host's session, so it commits or rolls back with the host's own changes. Without one, the
    extension keeps its own engine (SQLite by default, WAL and a busy timeout on) and a session per
    app context, and keeps that database's schema up to date with its own migrations.
    """

    def __init__(self, app: Flask, settings: Settings, host_db: SQLAlchemy | None) -> None:
        self.host_db = host_db
        self._app = weakref.ref(app)
        self._tables_ready = False
        self._tables_lock = threading.Lock()
        self._engine: Engine | None = None
        self._host_engine: Engine | None = None
        self._sessions: scoped_session[Session] | None = None
        uri = app.config.get("SQLALCHEMY_DATABASE_URI") if host_db is not None else None
        self._sqlite = make_url(uri or settings.database_uri).get_backend_name() == "sqlite"
        self._write_lock: AbstractContextManager[Any] = (
            threading.Lock() if self._sqlite else nullcontext()
        )
        if host_db is not None:
            for table in metadata.sorted_tables:
                if table.name not in host_db.metadata.tables:
                    table.to_metadata(host_db.metadata)
        else:
            self._engine = _create_embedded_engine(settings)
            self._sessions = scoped_session(
                sessionmaker(bind=self._engine, expire_on_commit=False),
                scopefunc=_app_context_id,
            )
            app.teardown_appcontext(self._remove_session)

    @property
    def embedded(self) -> bool:
        """True when the extension runs on its own database rather than the host's."""
        return self.host_db is None

    @property
    def engine(self) -> Engine:
        """The engine holding the tables (needs an app context with a host ``db``)."""
        if self._engine is not None:
            return self._engine
        assert self.host_db is not None
        engine = self.host_db.engine
        if engine is not self._host_engine:
            guard_against_fork(engine)
            self._host_engine = engine
        return engine

    def after_fork(self) -> None:
        """In a forked child: new locks, and pools of its own (the parent's connections are
        left to the parent, never closed or used here). With a host ``db``, its engines get
        new pools too: a pre-forking server's workers would otherwise share the connections
        its master opened (``db.create_all()`` at start-up) and mix up each other's queries."""
        self._tables_lock = threading.Lock()
        self._write_lock = threading.Lock() if self._sqlite else nullcontext()
        engines = [self._engine] if self._engine is not None else []
        app = self._app()
        if self.host_db is not None and app is not None:
            with app.app_context():
                engines += list(self.host_db.engines.values())
        for engine in engines:
            engine.dispose(close=False)

    @property
    def session(self) -> Session:
        """The session of the current app context, with the tables made ready on first use."""
        self.create_tables()
        if self._sessions is not None:
            return self._sessions()
        assert self.host_db is not None
        return self.host_db.session()

    def commits_itself(self, session: Session) -> bool:
        """True when what the extension writes on ``session`` (its :attr:`session`) is the
        extension's to commit: always on the embedded database; on the host's when no host
        transaction is open (inside one, it commits or rolls back with the host's change)."""
        return self.embedded or not session.in_transaction()

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A short write transaction in a session of its own, committed on leaving (rolled back
        on an exception).

        With SQLite this process's writers take turns on a lock first: SQLite allows one writer
        at a time and its busy handler waits in sleeps of milliseconds, where a lock hands over
        in microseconds.

        On PostgreSQL it runs at READ COMMITTED, whatever a host's engine defaults to: claims
        and the shares of the caps read, under their locks, what other processes committed.
        """
        with self._write_lock, self.independent_session() as session, session.begin():
            if self.engine.dialect.name == "postgresql":
                session.connection(execution_options={"isolation_level": "READ COMMITTED"})
            yield session

    def independent_session(self) -> Session:
        """A session of its own, apart from the request's: for background work and logs."""
        self.create_tables()
        return Session(bind=self.engine, expire_on_commit=False)

    def create_tables(self) -> None:
        """Make the extension's tables ready, once per process: an embedded database is brought
        to the newest revision of the extension's migrations (two quick queries when it is there
        already); a host's gets the tables it lacks, as ``db.create_all()`` would (its schema is
        the host's to migrate: see ``flask webhooks db upgrade``)."""
        if self._tables_ready:
            return
        with self._tables_lock:
            if not self._tables_ready:
                if self.embedded:
                    migrations.bring_to_head(self.engine)
                else:  # one process at a time, as the migrations run
                    with migrations.locked(self.engine) as connection:
                        metadata.create_all(connection, checkfirst=True)
                self._tables_ready = True

    def drop_tables(self) -> None:
        """Drop the extension's tables and its version table (used by tests and
        ``init-db --drop``)."""
        with self._tables_lock:
            migrations.drop_all(self.engine)
            self._tables_ready = False

    def dispose(self) -> None:
        """Close the embedded engine's pooled connections (a no-op with a host ``db``)."""
        if self._engine is not None:
            self._engine.dispose()

    def _remove_session(self, _exc: BaseException | None = None) -> None:
        assert self._sessions is not None
        self._sessions.remove()


def _app_context_id() -> int:
    return id(app_ctx._get_current_object())  # type: ignore[attr-defined]


def _create_embedded_engine(settings: Settings) -> Engine:
    url = make_url(settings.database_uri)
    if url.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True)
        guard_against_fork(engine)
        return engine
    in_memory = url.database in (None, "", ":memory:")
    connect_args: dict[str, Any] = {"timeout": settings.sqlite_busy_timeout}
    options: dict[str, Any] = {}
    if in_memory:
        # One shared connection, or every pooled connection would see its own empty database.
        connect_args["check_same_thread"] = False
        options["poolclass"] = StaticPool
    else:
        assert url.database is not None
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    engine = create_engine(url, connect_args=connect_args, **options)
    event.listen(engine, "connect", _sqlite_pragmas(in_memory, settings.sqlite_busy_timeout))
    guard_against_fork(engine)
    return engine


def guard_against_fork(engine: Engine) -> None:
    """Never hand a process a pooled connection that another process opened (after a fork):
    SQLAlchemy's recipe for pools and ``os.fork()``; installed once per engine."""
    if event.contains(engine, "connect", _note_pid):
        return
    event.listen(engine, "connect", _note_pid)
    event.listen(engine, "checkout", _refuse_other_pid)


def _note_pid(_dbapi_connection: Any, record: Any) -> None:
    record.info["pid"] = os.getpid()


def _refuse_other_pid(_dbapi_connection: Any, record: Any, proxy: Any) -> None:
    if record.info.get("pid", os.getpid()) != os.getpid():
        record.dbapi_connection = proxy.dbapi_connection = None
        raise DisconnectionError(
            f"a connection opened by process {record.info['pid']}, not by {os.getpid()}"
        )


def _sqlite_pragmas(in_memory: bool, busy_timeout: float) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect
