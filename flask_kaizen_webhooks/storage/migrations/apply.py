"""Bringing a database's schema to a revision: one process at a time per database (a
PostgreSQL advisory lock, SQLite's write lock), whatever state it is found in.

A database is found in one of three states: without any of the extension's tables (new), with
the tables but no revision (made by ``create_all`` before the extension had migrations, or by a
host's ``db.create_all()``: stamped with the revision its tables match, then upgraded), or at a
revision. The revision is read without loading Alembic; it is loaded only to change a schema.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, func, inspect, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from ...errors import SchemaError
from ..tables import metadata
from .names import HEAD, REVISIONS, VERSION, VERSION_TABLE

if TYPE_CHECKING:
    from .steps import OnStep

logger = logging.getLogger("flask_kaizen_webhooks")

#: The key of the PostgreSQL advisory lock held while the schema changes ("kaizenwh").
ADVISORY_LOCK = 0x6B61697A656E7768

#: The tables each revision made, newest first: a database with the extension's tables but no
#: revision is at the newest revision whose tables are all there. A revision that adds a table
#: adds a line here; one that only changes columns says how to tell its tables apart.
MARKERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("0002", frozenset({"kaizen_webhook_call_counts"})),
    (
        "0001",
        frozenset(
            {
                "kaizen_webhook_registrations",
                "kaizen_webhook_deliveries",
                "kaizen_webhook_events",
                "kaizen_webhook_attempts",
            }
        ),
    ),
)

#: Every table any revision made.
KNOWN_TABLES = frozenset(metadata.tables).union(*(tables for _, tables in MARKERS))


@dataclass(frozen=True)
class Found:
    """What a database holds of the extension's schema."""

    #: The revision its version table records; None without one (or with none recorded).
    revision: str | None
    #: The extension's tables it has.
    tables: frozenset[str]

    @property
    def unversioned(self) -> bool:
        """True for tables made without migrations."""
        return self.revision is None and bool(self.tables)

    @property
    def known(self) -> bool:
        """False for a revision this release does not have (a newer release's)."""
        return self.revision is None or self.revision in REVISIONS

    def matching(self) -> str:
        """The revision that tables made without migrations match."""
        for revision, tables in MARKERS:
            if tables <= self.tables:
                return revision
        missing = sorted(MARKERS[-1][1] - self.tables)
        raise SchemaError(
            f"The webhooks tables {', '.join(sorted(self.tables))} were found without "
            f"{', '.join(missing)} and without a revision in {VERSION_TABLE}: they match no "
            "revision of the extension's migrations. Drop them (flask webhooks init-db --drop "
            "loses their data) or make them match a release's."
        )

    def describe(self) -> str:
        """The state in words."""
        if self.revision is not None:
            return self.revision + (" (head)" if self.revision == HEAD else "")
        if self.tables:
            return f"tables without a revision, matching {self.matching()}"
        return "no tables"


def read_revision(connection: Connection) -> str | None:
    """The revision in the version table, None if it records none (raises without a table)."""
    rows = connection.execute(select(VERSION.c.version_num)).scalars().all()
    return ",".join(sorted(rows)) or None


def find(connection: Connection) -> Found:
    """What ``connection``'s database holds of the extension's schema."""
    names = set(inspect(connection).get_table_names())
    revision = read_revision(connection) if VERSION_TABLE in names else None
    return Found(revision, frozenset(names & KNOWN_TABLES))


def current(engine: Engine) -> Found:
    """What ``engine``'s database holds of the extension's schema."""
    with engine.connect() as connection:
        return find(connection)


def is_at_head(engine: Engine) -> bool:
    """True when the version table says head: the one query a process makes on an up-to-date
    database."""
    try:
        with engine.connect() as connection:
            return read_revision(connection) == HEAD
    except (OperationalError, ProgrammingError):  # no version table (yet)
        return False


@contextmanager
def locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction beside which no other process changes the schema:
    PostgreSQL's advisory lock (released at the commit), SQLite's write lock taken at the
    start (``BEGIN IMMEDIATE``). Committed on leaving, rolled back on an exception."""
    backend = engine.dialect.name
    if backend == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        # The driver would begin a transaction only before DML: here it is begun by hand.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                # SQLite may have rolled back already (after some errors): then there is none.
                if getattr(connection.connection.driver_connection, "in_transaction", True):
                    connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        return
    with engine.begin() as connection:
        if backend == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK)))
        yield connection


def bring_to_head(engine: Engine) -> None:
    """Bring the schema to head from whatever state it is in: the automatic set-up of an
    embedded database. A new database gets this release's tables and head's stamp at once."""
    if is_at_head(engine):
        return
    with locked(engine) as connection:
        found = find(connection)
        if found.revision == HEAD:
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
    """Run the downgrades to ``revision`` (``base``: no tables): the schema before and after."""
    # Imported here, not at the top: Alembic is loaded only when a schema changes (start-up).
    from . import steps

    with locked(engine) as connection:
        before = find(connection)
        if before.unversioned:
            steps.stamp(connection, before.matching())
        steps.downgrade(connection, revision, on_step)
        return before, find(connection)


def _upgrade(
    connection: Connection, found: Found, revision: str, on_step: OnStep | None = None
) -> None:
    # Imported here, not at the top: Alembic is loaded only when a schema changes (start-up).
    from . import steps

    if found.unversioned:
        steps.stamp(connection, found.matching())
    steps.upgrade(connection, revision, on_step)


def drop_all(engine: Engine) -> None:
    """Drop the extension's tables and its version table, with all their data."""
    with locked(engine) as connection:
        metadata.drop_all(connection)
        VERSION.drop(connection, checkfirst=True)
