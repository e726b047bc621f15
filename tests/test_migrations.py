"""The extension's own migrations, on the database: from nothing to exactly the tables, from
tables made without migrations, back down and up again, several processes at once, and beside
a host's Alembic (see test_migrations_app.py for apps, rows and commands)."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from flask_kaizen_webhooks.storage import migrations
from flask_kaizen_webhooks.storage.migrations import HEAD, REVISIONS, VERSION_TABLE, steps
from flask_kaizen_webhooks.storage.tables import metadata
from tests.migrating import HOST_VERSION, add_host_alembic, differences, host_alembic_version
from tests.schemas import before_call_counts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine(empty_database: str) -> Iterator[Engine]:
    made = create_engine(empty_database)
    yield made
    made.dispose()


def version_table(engine: Engine) -> list[tuple[str, str, bool]]:
    columns = inspect(engine).get_columns(VERSION_TABLE)
    return [(c["name"], str(c["type"]), c["nullable"]) for c in columns]


def test_the_revisions_are_the_files_and_head_is_the_last() -> None:
    assert steps.revisions() == list(REVISIONS)
    assert steps.head() == HEAD == REVISIONS[-1]


def test_the_previous_schema_kept_for_the_tests_is_the_one_in_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``tests/schemas/before_call_counts.py`` makes the same DDL as the release's models."""
    shown = subprocess.run(
        ["git", "show", "faaedb6^:flask_kaizen_webhooks/models.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        pytest.skip("the repository's history is not here")
    models = types.ModuleType("models_before_call_counts")
    monkeypatch.setitem(sys.modules, models.__name__, models)  # for its annotations
    exec(compile(shown.stdout, "models.py", "exec"), models.__dict__)

    def ddl(tables: MetaData, dialect: Any) -> list[str]:
        return [
            str(statement.compile(dialect=dialect)).strip()
            for table in tables.sorted_tables
            for statement in [
                CreateTable(table),
                *(CreateIndex(index) for index in sorted(table.indexes, key=lambda i: str(i.name))),
            ]
        ]

    for dialect in (sqlite.dialect(), postgresql.dialect()):
        assert ddl(before_call_counts.metadata, dialect) == ddl(models.metadata, dialect)


def test_upgrading_from_nothing_gives_exactly_the_tables_and_back(engine: Engine) -> None:
    steps_run: list[tuple[str | None, str | None]] = []
    before, after = migrations.upgrade(engine, on_step=lambda a, b, _: steps_run.append((a, b)))
    assert (before.describe(), after.describe()) == ("no tables", f"{HEAD} (head)")
    assert steps_run == [(None, "0001"), ("0001", "0002")]
    assert differences(engine, metadata) == []
    assert version_table(engine) == [("version_num", "VARCHAR(32)", False)]
    migrations.downgrade(engine, "0001")
    assert differences(engine, before_call_counts.metadata) == []
    migrations.downgrade(engine, "base")
    assert inspect(engine).get_table_names() == [VERSION_TABLE]
    migrations.upgrade(engine)
    assert differences(engine, metadata) == []
    assert migrations.current(engine).revision == HEAD


def test_a_new_database_is_made_at_once_and_checked_with_one_query(engine: Engine) -> None:
    migrations.bring_to_head(engine)
    assert differences(engine, metadata) == []
    assert version_table(engine) == [("version_num", "VARCHAR(32)", False)]
    assert migrations.current(engine).revision == HEAD
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    migrations.bring_to_head(engine)
    assert len(statements) == 1 and VERSION_TABLE in statements[0]
    # Alembic takes over the version table made without it.
    migrations.downgrade(engine, "0001")
    migrations.bring_to_head(engine)
    assert differences(engine, metadata) == []


def test_an_up_to_date_database_is_checked_without_loading_alembic(engine: Engine) -> None:
    migrations.bring_to_head(engine)
    code = (
        "import sys, flask_kaizen_webhooks\n"
        "from sqlalchemy import create_engine\n"
        "from flask_kaizen_webhooks.storage import migrations\n"
        "migrations.bring_to_head(create_engine(sys.argv[1]))\n"
        "print(sorted(name for name in sys.modules if name.startswith('alembic')))\n"
    )
    url = engine.url.render_as_string(hide_password=False)
    checked = subprocess.run(
        [sys.executable, "-c", code, url], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert checked.stdout.strip() == "[]", checked.stderr


def test_tables_made_by_create_all_are_stamped_with_the_revision_they_match(
    engine: Engine,
) -> None:
    before_call_counts.metadata.create_all(engine)
    assert migrations.current(engine).describe() == "tables without a revision, matching 0001"
    migrations.bring_to_head(engine)
    assert differences(engine, metadata) == []
    assert migrations.current(engine).revision == HEAD
    # This release's create_all (a host's db.create_all()) matches head.
    migrations.drop_all(engine)
    metadata.create_all(engine)
    before, after = migrations.upgrade(engine)
    assert (before.matching(), after.revision) == (HEAD, HEAD)


def test_a_table_that_db_create_all_made_ahead_of_its_revision_is_kept(engine: Engine) -> None:
    migrations.upgrade(engine, "0001")
    metadata.create_all(engine)  # the host's db.create_all() ran before the upgrade
    migrations.upgrade(engine)
    assert differences(engine, metadata) == []


def test_tables_that_match_no_revision_or_a_newer_revision_are_refused_plainly(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    before_call_counts.registrations.create(engine)
    with pytest.raises(migrations.SchemaError, match="without kaizen_webhook_attempts"):
        migrations.bring_to_head(engine)
    migrations.drop_all(engine)
    migrations.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    migrations.bring_to_head(engine)  # an app of an older release still starts
    assert "revision 0099, which this release does not have" in caplog.text
    with pytest.raises(migrations.SchemaError, match="0099"):
        migrations.upgrade(engine)


def test_the_filters_leave_out_exactly_the_extensions_tables(engine: Engine) -> None:
    ours = [*metadata.tables, VERSION_TABLE]
    for name in ours:
        assert not migrations.include_name(name, "table", {})
        assert not migrations.include_object(metadata.tables.get(name), name, "table", False, None)
    for name in ("host_users", "alembic_version", "kaizen_webhooks_settings", "webhooks"):
        assert migrations.include_name(name, "table", {})
    assert migrations.include_name("ix_kaizen_webhook_attempts_delivery", "index", {})
    # The host's metadata holds the extension's tables (as db.metadata does) and a host table
    # with a column the database lacks; the database is at 0001.
    add_host_alembic(engine)
    migrations.upgrade(engine, "0001")
    host = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(host)
    Table("host_users", host, Column("id", Integer, primary_key=True), Column("name", String(50)))
    # The host's env.py: its own version table, and the filters.
    unfiltered = differences(engine, host, version_table="alembic_version")
    assert {(d[0], d[1].name) for d in unfiltered if d[0].endswith("_table")} == {
        ("add_table", "kaizen_webhook_call_counts"),
        ("remove_table", VERSION_TABLE),
    }
    filtered = differences(
        engine,
        host,
        version_table="alembic_version",
        include_name=migrations.include_name,
        include_object=migrations.include_object,
    )
    assert [(d[0], d[2]) for d in filtered] == [("add_column", "host_users")]
    assert host_alembic_version(engine) == [HOST_VERSION]


def test_processes_starting_at_once_upgrade_the_database_once(
    empty_database: str, engine: Engine
) -> None:
    before_call_counts.metadata.create_all(engine)
    add_host_alembic(engine)
    start = time.time() + 1.5
    code = (
        "import sys, time\n"
        "from sqlalchemy import create_engine\n"
        "from flask_kaizen_webhooks.storage import migrations\n"
        "engine = create_engine(sys.argv[1], connect_args=eval(sys.argv[3]))\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "migrations.bring_to_head(engine)\n"
    )
    wait = "{'timeout': 30}" if empty_database.startswith("sqlite") else "{}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_database, str(start), wait],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for process in processes:
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors
    with engine.connect() as connection:
        versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert [tuple(row) for row in versions] == [(HEAD,)]
    assert differences(engine, metadata, include_object=host_tables_apart) == []
    assert host_alembic_version(engine) == [HOST_VERSION]


def host_tables_apart(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
    return type_ != "table" or name not in ("alembic_version", "host_users")
