"""Storage: the embedded database, the host's database and session, and concurrent writers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import ORMExecuteState

from flask_kaizen_webhooks import RevConflict, get_state
from flask_kaizen_webhooks.storage import registrations
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
        result, _changed = registrations.update_registration(
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


def test_hosts_migration_scripts_still_find_the_tables_where_they_were() -> None:
    from flask_kaizen_webhooks.models import metadata
    from flask_kaizen_webhooks.storage import tables

    assert metadata is tables.metadata and "kaizen_webhook_deliveries" in metadata.tables
