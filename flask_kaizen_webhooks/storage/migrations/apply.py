"""Bringing a database's schema to a revision: one process at a time per database (a
PostgreSQL advisory lock, SQLite's write lock), whatever state it is found in.

A database is found in one of three states: without any of the extension's tables (new), with
the tables but no revision (made by ``create_all`` before the extension had migrations, or by a
host's ``db.create_all()``: it goes through every revision, each making only the tables that
are missing), or at a revision (upgraded from there, and at head any table that went missing is
made again). The revision is read without loading Alembic; it is loaded only to change a schema.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, func, inspect, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from ..tables import metadata
from .names import HEAD, REVISIONS, VERSION, VERSION_TABLE, OnStep

logger = logging.getLogger("flask_kaizen_webhooks")

#: The key of the PostgreSQL advisory lock held while the schema changes ("kaizenwh").
ADVISORY_LOCK = 0x6B61697A656E7768

#: The tables of head, which every up-to-date database has.
TABLES = frozenset(metadata.tables)


@dataclass(frozen=True)
class Found:
    """What a database holds of the extension's schema."""

    #: The revision its version table records; None without one (or with none recorded).
    revision: str | None
    #: The extension's tables it has.
    tables: frozenset[str]

    @property
    def unversioned(self) -> bool:
        """True for tables made without migrations (by a release from before them, or by a
        host's ``db.create_all()``)."""
        return self.revision is None and bool(self.tables)

    @property
    def known(self) -> bool:
        """False for a revision this release does not have (a newer release's)."""
        return self.revision is None or self.revision in REVISIONS

    @property
    def missing(self) -> frozenset[str]:
        """Head's tables the database lacks."""
        return TABLES - self.tables

    @property
    def up_to_date(self) -> bool:
        """At head, with every table of head."""
        return self.revision == HEAD and not self.missing

    def describe(self) -> str:
        """The state in words."""
        if self.revision is None:
            return "tables without a revision" if self.tables else "no tables"
        state = self.revision + (" (head)" if self.revision == HEAD else "")
        if self.revision == HEAD and self.missing:
            state += f", without {', '.join(sorted(self.missing))}"
        return state


def read_revision(connection: Connection) -> str | None:
    """The revision in the version table, None if it records none (raises without a table)."""
    rows = connection.execute(select(VERSION.c.version_num)).scalars().all()
    return ",".join(sorted(rows)) or None


def find(connection: Connection) -> Found:
    """What ``connection``'s database holds of the extension's schema."""
    names = set(inspect(connection).get_table_names())
    revision = read_revision(connection) if VERSION_TABLE in names else None
    return Found(revision, frozenset(names & TABLES))


def current(engine: Engine) -> Found:
    """What ``engine``'s database holds of the extension's schema."""
    with engine.connect() as connection:
        return find(connection)


def is_at_head(engine: Engine) -> bool:
    """True when the version table says head and every table is there: what a process asks
    once of an up-to-date database (two quick queries, no lock, no Alembic)."""
    try:
        with engine.connect() as connection:
            if read_revision(connection) != HEAD:
                return False
            return set(inspect(connection).get_table_names()) >= TABLES
    except (OperationalError, ProgrammingError):  # no version table (yet)
        return False


@contextmanager
def locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction beside which no other process changes the schema:
    PostgreSQL's advisory lock (released at the commit), SQLite's write lock taken at the
    start (``BEGIN IMMEDIATE``). Committed on leaving, rolled back on an exception."""
    backend = engine.dialect.name
    if backend == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with _sqlite_write_lock(engine) as connection:
            yield connection
        return
    with engine.begin() as connection:
        if backend == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK)))
        yield connection


@contextmanager
def _sqlite_write_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding SQLite's write lock from the start, committed on leaving.

    SQLAlchemy begins first (a host's engine may send its own ``BEGIN`` then, as SQLAlchemy's
    recipe for pysqlite does): in a transaction so begun, a write takes the lock; otherwise
    ``BEGIN IMMEDIATE`` does. The driver's own commit and rollback end either kind.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("SELECT 1")
        driver = connection.connection.driver_connection
        assert driver is not None
        if driver.in_transaction:
            version = connection.exec_driver_sql("PRAGMA user_version").scalar()
            connection.exec_driver_sql(f"PRAGMA user_version = {int(version or 0)}")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            driver.rollback()
            raise
        driver.commit()


def bring_to_head(engine: Engine) -> None:
    """Bring the schema to head from whatever state it is in: the automatic set-up of an
    embedded database. A new database gets this release's tables and head's stamp at once."""
    if is_at_head(engine):
        return
    with locked(engine) as connection:
        found = find(connection)
        if found.up_to_date:
            return
        if not found.known:
            logger.warning(
                "The webhooks tables in %s are at revision %s, which this release does not "
                "have (a newer release's?): they are left as they are.",
                engine.url,
                found.revision,
            )
            return
        if found.revision is None and not found.tables:
            metadata.create_all(connection)
            VERSION.create(connection, checkfirst=True)
            connection.execute(VERSION.insert().values(version_num=HEAD))
            return
        _upgrade(connection, found, "head")
    logger.info(
        "Upgraded the webhooks tables in %s from %s to %s", engine.url, found.describe(), HEAD
    )


def upgrade(
    engine: Engine, revision: str = "head", on_step: OnStep | None = None
) -> tuple[Found, Found]:
    """Run the upgrades to ``revision`` (tables made without migrations are stamped with the
    revision they match first): the schema before and after."""
    with locked(engine) as connection:
        before = find(connection)
        _upgrade(connection, before, revision, on_step)
        return before, find(connection)


def downgrade(engine: Engine, revision: str, on_step: OnStep | None = None) -> tuple[Found, Found]:
    """Run the downgrades to ``revision`` (``base``: no tables), from head first when the
    tables have no revision or lack some of theirs: the schema before and after."""
    # Imported here, not at the top: Alembic is loaded only when a schema changes (start-up).
    from . import steps

    with locked(engine) as connection:
        before = find(connection)
        if before.unversioned or (before.revision == HEAD and before.missing):
            _upgrade(connection, before, "head")
        steps.downgrade(connection, revision, on_step)
        return before, find(connection)


def _upgrade(
    connection: Connection, found: Found, revision: str, on_step: OnStep | None = None
) -> None:
    # Imported here, not at the top: Alembic is loaded only when a schema changes (start-up).
    from . import steps

    # Tables without a revision go through every revision, each making only what is missing.
    steps.upgrade(connection, revision, on_step)
    if revision in ("head", HEAD):  # head's tables that went missing are made again
        metadata.create_all(connection, checkfirst=True)


def drop_all(engine: Engine) -> None:
    """Drop the extension's tables and its version table, with all their data."""
    with locked(engine) as connection:
        metadata.drop_all(connection)
        VERSION.drop(connection, checkfirst=True)
