"""Helpers of the migration tests: a database emptied of every table they make, the host's own
Alembic beside the extension's, and what Alembic's autogenerate would change."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, create_engine, text

from flask_kaizen_webhooks.storage import migrations
from flask_kaizen_webhooks.storage.migrations import VERSION_TABLE

#: The revision in the host's own ``alembic_version``, which must never change.
HOST_VERSION = "host0042"


def empty(url: str) -> None:
    """Drop every table in ``url``'s database: those the migration tests make, and any an
    earlier test of this process left there (the tests share a PostgreSQL database per
    process, in whatever order they run)."""
    engine = create_engine(url)
    migrations.drop_all(engine)
    left = MetaData()
    left.reflect(engine)
    left.drop_all(engine)
    engine.dispose()


def add_host_alembic(engine: Engine) -> None:
    """The host's own Alembic version table and one of its tables."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(text(f"INSERT INTO alembic_version VALUES ('{HOST_VERSION}')"))
        connection.execute(text("CREATE TABLE host_users (id INTEGER NOT NULL PRIMARY KEY)"))


def host_alembic_version(engine: Engine) -> list[str]:
    """What the host's ``alembic_version`` holds."""
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def differences(engine: Engine, target: MetaData, **options: Any) -> list[Any]:
    """What Alembic's autogenerate would change in ``engine``'s database to match ``target``
    (the extension's version table apart, unless ``options`` name another)."""
    with engine.connect() as connection:
        opts = {"version_table": VERSION_TABLE, **options}
        return list(compare_metadata(MigrationContext.configure(connection, opts=opts), target))


def revision_of(engine: Engine) -> str | None:
    """The revision the extension's version table records."""
    return migrations.current(engine).revision
