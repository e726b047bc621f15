"""Storage: the embedded database, the host's database and session, and concurrent writers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import ORMExecuteState

from flask_kaizen_webhooks import RevConflict, clock, get_state
from flask_kaizen_webhooks.storage import outbox, registrations
from flask_kaizen_webhooks.storage.tables import Registration
from tests.conftest import ADMIN, Host

SECRET = "signature_secret_0123456789"


def add(host: Host, owner: str = "org-1", url: str = "https://h.example.com/a") -> tuple[str, str]:
    """Store a registration; return its id and rev."""
    with host.app.app_context():
        session = get_state().database.session
        registration = registrations.create_registration(
            session, owner=owner, topic="profile_updated", url=url, sealed_secret=SECRET
        )
        session.commit()
        return registration.id, registration.rev


def test_embedded_default_is_sqlite_in_instance_folder_with_wal(make_host: Any) -> None:
    host = make_host("sqlite", KAIZEN_WEBHOOKS_DATABASE_URI=None)
    expected = Path(host.app.instance_path) / "kaizen_webhooks.sqlite3"
    assert get_state(host.app).settings.database_uri == f"sqlite:///{expected}"
    add(host)
    assert expected.is_file()
    with host.app.app_context():
        session = get_state().database.session
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_tables_are_created_on_first_use(host: Host) -> None:
    with host.app.app_context():
        engine = get_state().database.engine
        assert "kaizen_webhook_registrations" not in inspect(engine).get_table_names()
    add(host)
    with host.app.app_context():
        assert "kaizen_webhook_registrations" in inspect(engine).get_table_names()


def test_init_db_command_creates_tables(host: Host) -> None:
    result = host.app.test_cli_runner().invoke(args=["webhooks", "init-db"])
    assert result.exit_code == 0, result.output
    assert "tables are ready" in result.output
    with host.app.app_context():
        engine = get_state().database.engine
        assert "kaizen_webhook_registrations" in inspect(engine).get_table_names()
    add(host)
    again = host.app.test_cli_runner().invoke(args=["webhooks", "init-db", "--drop"])
    assert again.exit_code == 0, again.output
    with host.app.app_context():
        assert get_state().database.session.scalar(select(Registration.id)) is None


@pytest.mark.parametrize("server", ["sqlite", "postgres"])
def test_with_host_db_writes_join_the_host_session(make_host: Any, server: str) -> None:
    host = make_host(f"{server}-hostdb")
    assert host.db is not None
    # The tables are part of the host's metadata: db.create_all() and migrations see them.
    assert "kaizen_webhook_registrations" in host.db.metadata.tables
    with host.app.app_context():
        host.db.create_all()
        assert get_state().database.session is host.db.session()
        session = host.db.session
        registrations.create_registration(
            session,
            owner="o",
            topic="profile_updated",
            url="https://h.example.com/",
            sealed_secret=SECRET,
        )
        session.rollback()  # the host's transaction rolls back: nothing of ours remains
        assert session.scalar(select(Registration.id)) is None
        kept = registrations.create_registration(
            session,
            owner="o",
            topic="profile_updated",
            url="https://h.example.com/",
            sealed_secret=SECRET,
        )
        session.commit()
        # Committed in the host's own database, visible to any other connection.
        other = create_engine(host.app.config["SQLALCHEMY_DATABASE_URI"])
        with other.connect() as connection:
            ids = connection.execute(text("SELECT id FROM kaizen_webhook_registrations")).all()
        other.dispose()
        assert [row.id for row in ids] == [kept.id]


def test_racing_update_loses_at_the_write_not_only_at_the_check(host: Host) -> None:
    """B reads rev 1 and passes the check; A commits rev 2 before B writes; B must get 409."""
    created_id, created_rev = add(host)
    winner: dict[str, str] = {}

    def update(rev: str, url: str) -> Registration:
        session = get_state().database.session
        result = registrations.update_registration(
            session,
            owner="org-1",
            registration_id=created_id,
            rev=rev,
            topic="profile_updated",
            url=url,
            sealed_secret=None,
        )
        session.commit()
        return result

    def run_a_first(state: ORMExecuteState) -> None:
        if state.is_update and not winner:
            with host.app.app_context():
                winner["rev"] = update(created_rev, "https://h.example.com/a-won").rev

    with host.app.app_context():
        from sqlalchemy import event

        session = get_state().database.session
        event.listen(session, "do_orm_execute", run_a_first)
        with pytest.raises(RevConflict) as raised:
            update(created_rev, "https://h.example.com/b-lost")
        session.rollback()
        assert raised.value.current_rev == winner["rev"]
        event.remove(session, "do_orm_execute", run_a_first)
        stored = registrations.get_registration(session, owner="org-1", registration_id=created_id)
        assert stored.url == "https://h.example.com/a-won"
        assert stored.rev == winner["rev"]


def race_updates(base: str, created: dict[str, str], workers: int) -> list[requests.Response]:
    """``workers`` PUTs of the same registration with the same rev, released at once."""
    barrier = threading.Barrier(workers)

    def put(index: int) -> requests.Response:
        barrier.wait()
        return requests.put(
            f"{base}/v2/webhooks/registrations/{created['id']}",
            json={
                "topic": "profile_updated",
                "url": f"https://h.example.com/{created['id']}/w{index}",
                "rev": created["rev"],
            },
            headers=ADMIN,
            timeout=30,
        )

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(put, range(workers)))


def test_concurrent_updates_over_http_exactly_one_wins(host: Host, serve: Any) -> None:
    base = serve(host.app).url
    workers = 6
    for round_number in range(5):
        created = requests.post(
            f"{base}/v2/webhooks/registrations",
            json={
                "topic": "profile_updated",
                "url": f"https://h.example.com/{round_number}",
                "secret": SECRET,
            },
            headers=ADMIN,
            timeout=10,
        ).json()
        responses = race_updates(base, created, workers)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [409] * (workers - 1), [r.text for r in responses]
        won = next(r.json() for r in responses if r.status_code == 200)
        assert won["rev"].startswith("2-")
        for response in responses:
            if response.status_code == 409:
                assert response.json()["error"]["current_rev"] == won["rev"]


def test_prepared_statements_match_sqlalchemy_on_every_backend(host: Host) -> None:
    """The request path's driver-level statements write and read what SQLAlchemy would."""
    from datetime import UTC, datetime

    from sqlalchemy import bindparam, insert

    from flask_kaizen_webhooks.storage.prepared import Prepared
    from flask_kaizen_webhooks.storage.tables import Delivery

    table = Delivery.__table__
    moment = datetime(2026, 11, 29, 7, 1, 2, 345678, tzinfo=UTC)
    keys = ("id", "registration_id", "owner", "payload")
    shared = {"topic": "profile_updated", "mode": "async", "status": "pending", "attempts": 0}
    shared |= {"retry_index": 0, "updated_at": moment}
    write = Prepared(insert(table), column_keys=(*keys, *shared, "created_at"))
    read = Prepared(
        select(table.c.id, table.c.created_at, table.c.attempts)
        .where(table.c.topic == bindparam("topic"), table.c.mode == "async")
        .order_by(table.c.id)
    )
    add(host)
    with host.app.app_context():
        session = get_state().database.session
        connection = session.connection()
        with pytest.raises(ValueError, match="needs values for"):
            Prepared(insert(table), column_keys=keys).compiled(connection.dialect)
        rows = [(f"d-{n}", "r-1", "org-1", "{}") for n in range(3)]
        write.insert_many(connection, {**shared, "created_at": moment}, keys, rows[:2])
        # Something watching the engine's statements (tracing, say) sees them.
        seen: list[str] = []

        def watch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        event.listen(session.get_bind(), "before_cursor_execute", watch)
        try:
            write.insert_many(connection, {**shared, "created_at": moment}, keys, rows[2:])
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", watch)
        assert len(seen) == 1 and seen[0].startswith("INSERT INTO kaizen_webhook_deliveries")
        session.commit()
        # A driver error is SQLAlchemy's exception, as from any other statement.
        with pytest.raises(IntegrityError):
            write.insert_many(session.connection(), {**shared, "created_at": moment}, keys, rows)
        session.rollback()
        fast = [tuple(row) for row in read.rows(session.connection(), {"topic": "profile_updated"})]
        usual = [
            tuple(row)
            for row in session.execute(
                select(table.c.id, table.c.created_at, table.c.attempts)
                .where(table.c.topic == "profile_updated")
                .order_by(table.c.id)
            )
        ]
        stored = session.scalars(select(Delivery).order_by(Delivery.id)).all()
    assert fast == usual and [row[0] for row in fast] == ["d-0", "d-1", "d-2"]
    assert {clock.as_utc(row[1]) for row in fast} == {moment}
    assert [(d.status, d.attempts, d.retry_index) for d in stored] == [("pending", 0, 0)] * 3


def test_time_ordered_ids_are_uuid7_unique_and_ordered_by_time() -> None:
    import time
    import uuid

    first = outbox.time_ordered_ids(500)
    time.sleep(0.002)
    later = outbox.time_ordered_ids(3)
    assert len(set(first + later)) == 503
    for text_id in first + later:
        parsed = uuid.UUID(text_id)
        assert str(parsed) == text_id
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert max(first) < min(later)  # a later millisecond sorts after


def test_a_prepared_insert_of_a_single_column_on_a_positional_driver() -> None:
    from sqlalchemy import Column, Integer, MetaData, Table, insert

    from flask_kaizen_webhooks.storage.prepared import Prepared

    table = Table("single", MetaData(), Column("x", Integer))
    engine = create_engine("sqlite://")  # qmark: positional parameters
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        Prepared(insert(table), column_keys=("x",)).insert_many(
            connection, {}, ("x",), [(1,), (2,)]
        )
        assert sorted(connection.execute(select(table.c.x)).scalars()) == [1, 2]
    engine.dispose()
