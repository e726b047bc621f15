"""The extension's own migrations, on the database: from nothing to exactly the tables, from
tables made without migrations, back down and up again, several processes at once, and beside
a host's Alembic (see test_migrations_app.py for apps, rows and commands)."""

from __future__ import annotations

import subprocess
import sys
import threading
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
from tests.conftest import REQUIRE_SERVICES
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
        if REQUIRE_SERVICES:  # CI runs on a clone with its history
            pytest.fail(f"the repository's history is not here: {shown.stderr}")
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
    assert steps_run == [
        (None, "0001"),
        ("0001", "0002"),
        ("0002", "0003"),
        ("0003", "0004"),
        ("0004", "0005"),
        ("0005", "0006"),
    ]
    assert differences(engine, metadata) == []
    assert version_table(engine) == [("version_num", "VARCHAR(32)", False)]
    migrations.downgrade(engine, "0001")
    assert differences(engine, before_call_counts.metadata) == []
    migrations.downgrade(engine, "base")
    assert inspect(engine).get_table_names() == [VERSION_TABLE]
    migrations.upgrade(engine)
    assert differences(engine, metadata) == []
    assert migrations.current(engine).revision == HEAD


def test_a_new_database_is_made_at_once_and_checked_with_two_queries(engine: Engine) -> None:
    migrations.bring_to_head(engine)
    assert differences(engine, metadata) == []
    assert version_table(engine) == [("version_num", "VARCHAR(32)", False)]
    assert migrations.current(engine).revision == HEAD
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    migrations.bring_to_head(engine)
    # The revision, then the table names (one query on either backend): no lock, no Alembic.
    assert len(statements) == 2 and VERSION_TABLE in statements[0]
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


def test_tables_made_by_create_all_are_brought_to_head(engine: Engine) -> None:
    before_call_counts.metadata.create_all(engine)
    assert migrations.current(engine).describe() == "tables without a revision"
    migrations.bring_to_head(engine)
    assert differences(engine, metadata) == []
    assert migrations.current(engine).revision == HEAD
    # This release's create_all (a host's db.create_all()) is head already.
    migrations.drop_all(engine)
    metadata.create_all(engine)
    before, after = migrations.upgrade(engine)
    assert (before.unversioned, after.up_to_date) == (True, True)
    assert differences(engine, metadata) == []


def test_a_table_that_db_create_all_made_ahead_of_its_revision_is_kept(engine: Engine) -> None:
    migrations.upgrade(engine, "0001")
    metadata.create_all(engine)  # the host's db.create_all() ran before the upgrade
    migrations.upgrade(engine)
    assert differences(engine, metadata) == []


@pytest.mark.parametrize(
    "made",
    [
        # An install from before the events table (its columns are 0001's).
        ["kaizen_webhook_registrations", "kaizen_webhook_deliveries", "kaizen_webhook_attempts"],
        # A create_all cut short (SQLite makes no DDL transactional): call counts among them.
        ["kaizen_webhook_attempts", "kaizen_webhook_call_counts"],
    ],
)
def test_tables_without_a_revision_get_the_tables_they_lack(
    engine: Engine, made: list[str]
) -> None:
    earlier = before_call_counts.metadata.tables
    for name in made:
        (earlier[name] if name in earlier else metadata.tables[name]).create(engine)
    migrations.bring_to_head(engine)
    assert differences(engine, metadata) == []
    assert migrations.current(engine).up_to_date


def test_tables_dropped_without_their_revision_are_made_again(engine: Engine) -> None:
    migrations.bring_to_head(engine)
    metadata.drop_all(engine)  # a host's teardown, say: the version table stays at head
    assert not migrations.is_at_head(engine)
    assert migrations.current(engine).describe().startswith(f"{HEAD} (head), without kaizen_")
    migrations.bring_to_head(engine)
    assert differences(engine, metadata) == []
    metadata.tables["kaizen_webhook_events"].drop(engine)
    assert "without kaizen_webhook_events" in migrations.current(engine).describe()
    _before, after = migrations.upgrade(engine)
    assert after.up_to_date and differences(engine, metadata) == []
    metadata.tables["kaizen_webhook_call_counts"].drop(engine)
    migrations.downgrade(engine, "base")  # from head, its tables made again first
    assert migrations.current(engine).describe() == "no tables"


def test_a_newer_revision_is_left_alone_with_a_warning_and_refused_plainly(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
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
    # (Column changes come as lists of changes; tables as tuples.)
    tables = [d for d in unfiltered if isinstance(d, tuple) and d[0].endswith("_table")]
    assert {(d[0], d[1].name) for d in tables} == {
        ("add_table", "kaizen_webhook_call_counts"),
        ("add_table", "kaizen_webhook_slots"),
        ("add_table", "kaizen_webhook_portal_sessions"),
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
    code = (
        "import sys\n"
        "from sqlalchemy import create_engine\n"
        "from flask_kaizen_webhooks.storage import migrations\n"
        "engine = create_engine(sys.argv[1], connect_args=eval(sys.argv[2]))\n"
        "wait()\n"
        "migrations.bring_to_head(engine)\n"
    )
    wait = "{'timeout': 30}" if empty_database.startswith("sqlite") else "{}"
    run_at_once(code, [empty_database, wait], processes=4)
    with engine.connect() as connection:
        versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert [tuple(row) for row in versions] == [(HEAD,)]
    assert differences(engine, metadata, include_object=host_tables_apart) == []
    assert host_alembic_version(engine) == [HOST_VERSION]


def host_tables_apart(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
    return type_ != "table" or name not in ("alembic_version", "host_users")


def test_the_sqlite_lock_holds_under_sqlalchemys_own_transaction_recipe(tmp_path: Path) -> None:
    """A host's engine that sends its own BEGIN (SQLAlchemy's recipe for pysqlite)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'recipe.sqlite3'}")
    event.listen(
        engine, "connect", lambda driver, _record: setattr(driver, "isolation_level", None)
    )
    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
    before_call_counts.metadata.create_all(engine)
    migrations.upgrade(engine)
    assert migrations.current(engine).up_to_date and differences(engine, metadata) == []
    migrations.drop_all(engine)
    assert migrations.current(engine).describe() == "no tables"
    engine.dispose()


def test_two_databases_migrated_at_once_in_one_process_do_not_meet(tmp_path: Path) -> None:
    """Alembic's run lives in module globals: two apps' databases take turns."""
    engines = [create_engine(f"sqlite:///{tmp_path / f'{name}.sqlite3'}") for name in "ab"]
    for engine in engines:
        before_call_counts.metadata.create_all(engine)

    def slow_inspection(_conn: Any, _cursor: Any, statement: str, *args: Any) -> None:
        if "kaizen_webhook_call_counts" in statement and "table_info" in statement:
            time.sleep(0.5)  # the first run is under way when the second starts

    event.listen(engines[0], "before_cursor_execute", slow_inspection)
    errors: list[BaseException] = []

    def migrate(engine: Engine) -> None:
        try:
            migrations.bring_to_head(engine)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=migrate, args=(engine,)) for engine in engines]
    threads[0].start()
    time.sleep(0.2)
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert all(migrations.current(engine).up_to_date for engine in engines)
    for engine in engines:
        engine.dispose()


def test_hosts_processes_making_the_tables_at_once_do_not_collide(
    empty_database: str, engine: Engine
) -> None:
    """With a host ``db``, first use makes the missing tables one process at a time."""
    code = (
        "import sys\n"
        "from flask import Flask\n"
        "from flask_sqlalchemy import SQLAlchemy\n"
        "from flask_kaizen_webhooks import KaizenWebhooks, get_state\n"
        "app = Flask('host')\n"
        "app.config.update(SECRET_KEY='k', SQLALCHEMY_DATABASE_URI=sys.argv[1],\n"
        "                  SQLALCHEMY_ENGINE_OPTIONS=eval(sys.argv[2]))\n"
        "db = SQLAlchemy(app)\n"
        "KaizenWebhooks(app, db=db)\n"
        "wait()\n"
        "with app.app_context():\n"
        "    get_state(app).database.create_tables()\n"
    )
    options = "{'connect_args': {'timeout': 30}}" if empty_database.startswith("sqlite") else "{}"
    run_at_once(code, [empty_database, options], processes=8)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())


def run_at_once(code: str, arguments: list[str], *, processes: int) -> None:
    """Run ``code`` in several processes that start its work together, after their imports
    (``wait()``); each must succeed."""
    start = time.time() + 2.0
    prelude = f"import time\ndef wait():\n    time.sleep(max(0.0, {start} - time.time()))\n"
    started = [
        subprocess.Popen(
            [sys.executable, "-c", prelude + code, *arguments],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for process in started:
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors
