"""An app on an install of the previous release: its rows survive the upgrade (automatic for the
embedded database, ``flask webhooks db upgrade`` for the host's) and are sent and shown; the
``flask webhooks db`` commands up and down; two quick queries per process once the schema is
at head."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jose.jws
import pytest
from sqlalchemy import Engine, create_engine, event, inspect, select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.clock import utcnow
from flask_kaizen_webhooks.signing import with_request_ids
from flask_kaizen_webhooks.storage import registrations
from flask_kaizen_webhooks.storage.migrations import HEAD, VERSION_TABLE
from flask_kaizen_webhooks.storage.tables import CallCount, Registration, metadata, url_digest
from tests.conftest import ADMIN, DELIVERY_CONFIG, Host
from tests.migrating import (
    HOST_VERSION,
    add_host_alembic,
    differences,
    host_alembic_version,
    revision_of,
)
from tests.receivers import wait_until
from tests.schemas import before_call_counts as before

SECRET = "signature_secret_0123456789"


def host_on(make_host: Callable[..., Host], url: str, *, shared: bool, **config: Any) -> Host:
    """An app whose extension (embedded, or sharing the host's ``db``) keeps its tables at
    ``url``, leaving what is there."""
    server = "postgres" if url.startswith("postgresql") else "sqlite"
    key = "SQLALCHEMY_DATABASE_URI" if shared else "KAIZEN_WEBHOOKS_DATABASE_URI"
    backend = f"{server}-hostdb" if shared else server
    return make_host(backend, keep_tables=True, **{key: url}, **config)


def write_previous_rows(engine: Engine, sealed: str, url: str) -> dict[str, str]:
    """What an install of the previous release holds: a registration, a pending delivery, a
    succeeded and a failed one with their attempts, and an event not fanned out yet."""
    now = utcnow()
    names = ["registration", "pending", "succeeded", "failed", "event", "from_event"]
    ids = {name: f"00000000-0000-7000-8000-00000000000{n}" for n, name in enumerate(names)}
    document = json.dumps({"id": "p-1"}, separators=(",", ":"))
    owned = {"owner": "org-1", "topic": "profile_updated", "created_at": now, "updated_at": now}

    def delivery(name: str, status: str, **values: Any) -> dict[str, Any]:
        [payload] = with_request_ids(document, [ids[name]])
        empty = dict.fromkeys(["next_attempt_at", "last_status_code", "completed_at"])
        return {
            **owned,
            **empty,
            "id": ids[name],
            "registration_id": ids["registration"],
            "mode": "async",
            "payload": payload,
            "status": status,
            "attempts": 0 if status == "pending" else 1,
            "retry_index": 0,
            **values,
        }

    with engine.begin() as connection:
        connection.execute(
            before.registrations.insert(),
            {
                **owned,
                "id": ids["registration"],
                "url": url,
                "url_digest": url_digest(url),
                "secret": sealed,
                "secret_version": 1,
                "rev": "1-abc",
                "rev_number": 1,
                "state": "active",
                "consecutive_failures": 0,
            },
        )
        connection.execute(
            before.deliveries.insert(),
            [
                delivery("pending", "pending", next_attempt_at=now - timedelta(seconds=5)),
                delivery("succeeded", "succeeded", last_status_code=200, completed_at=now),
                delivery("failed", "failed", last_status_code=500, completed_at=now),
            ],
        )
        connection.execute(
            before.attempts.insert(),
            [
                {"delivery_id": ids[name], "number": 1, "started_at": now, "elapsed": 0.05}
                | {"status_code": code}
                for name, code in (("succeeded", 200), ("failed", 500))
            ],
        )
        recipients = json.dumps([[ids["from_event"], ids["registration"], "org-1"]])
        connection.execute(
            before.events.insert(),
            {"id": ids["event"], "topic": "profile_updated", "document": document}
            | {"recipients": recipients, "created_at": now},
        )
    return ids


@pytest.mark.parametrize("shared", [False, True], ids=["embedded", "hostdb"])
def test_an_install_of_the_previous_release_is_upgraded_with_its_rows(
    empty_database: str, shared: bool, make_host: Callable[..., Host], receiver: Any
) -> None:
    engine = create_engine(empty_database)
    before.metadata.create_all(engine)
    add_host_alembic(engine)
    host = host_on(make_host, empty_database, shared=shared, **DELIVERY_CONFIG)
    host.webhooks.shutdown(host.app)  # nothing is sent until the rows have been looked at
    target = receiver()
    ids = write_previous_rows(engine, get_state(host.app).secrets.seal(SECRET), target.url())
    if shared:  # the host's deployment step
        output = cli(host, "upgrade")
        assert "only the tables they lacked" in output and f"to {HEAD} (head)." in output
        assert "0001 -> 0002  Add kaizen_webhook_call_counts" in output
    # Embedded, the first use upgrades.
    client = host.app.test_client()
    listed = client.get("/v2/webhooks/registrations", headers=ADMIN).get_json()["items"]
    assert [(r["id"], r["rev"]) for r in listed] == [(ids["registration"], "1-abc")]
    assert revision_of(engine) == HEAD

    def statuses() -> dict[str, str]:
        path = f"/v2/webhooks/registrations/{ids['registration']}/deliveries"
        return {d["id"]: d["status"] for d in client.get(path, headers=ADMIN).get_json()["items"]}

    expected = {name: name for name in ("pending", "succeeded", "failed")}
    assert statuses() == {ids[name]: status for name, status in expected.items()}
    shown = client.get(f"/v2/webhooks/deliveries/{ids['succeeded']}", headers=ADMIN).get_json()
    assert [attempt["status_code"] for attempt in shown["attempts_log"]] == [200]
    # The new table is there and used: a redelivery is counted in it.
    redelivered = client.post(f"/v2/webhooks/deliveries/{ids['failed']}/redeliver", headers=ADMIN)
    assert redelivered.status_code == 202, redelivered.get_json()
    with engine.connect() as connection:
        assert connection.scalar(select(CallCount.count)) == 1
    # The pending delivery, the event's and the redelivered one are sent, signed with the
    # secret the previous release sealed.
    host.webhooks.start(host.app)
    received = target.wait_for(3)
    claims = [jose.jws.verify(r.body.decode(), SECRET, algorithms=["HS256"]) for r in received]
    sent = {json.loads(claim)["webhook_request_id"] for claim in claims}
    assert sent == {ids["pending"], ids["from_event"], ids["failed"]}
    wait_until(lambda: set(statuses().values()) == {"succeeded"} and len(statuses()) == 4)
    assert differences(engine, metadata, include_object=ours) == []
    assert host_alembic_version(engine) == [HOST_VERSION]
    engine.dispose()


def ours(_object: Any, name: str | None, type_: str, *_: Any) -> bool:
    """Autogenerate's filter of the extension's tables alone (the host's apart)."""
    return type_ != "table" or name in metadata.tables


def cli(host: Host, *args: str) -> str:
    result = host.app.test_cli_runner().invoke(args=["webhooks", "db", *args])
    assert result.exit_code == 0, result.output
    return str(result.output)


@pytest.mark.parametrize("shared", [False, True], ids=["embedded", "hostdb"])
def test_the_db_commands_go_down_and_up_again_keeping_the_rows(
    empty_database: str, shared: bool, make_host: Callable[..., Host]
) -> None:
    engine = create_engine(empty_database)
    add_host_alembic(engine)
    host = host_on(make_host, empty_database, shared=shared)
    assert "no tables" in cli(host, "current")
    assert f"went from no tables to {HEAD} (head)" in cli(host, "upgrade")
    assert f": {HEAD} (head)" in cli(host, "current")
    with host.app.app_context():
        session = get_state().database.session
        kept = registrations.create_registration(
            session, owner="o", topic="profile_updated", url="https://h.ex.com/", sealed_secret="s"
        ).id
        session.commit()
    output = cli(host, "downgrade", "0001")
    assert "0002 -> 0001" in output and f"went from {HEAD} (head) to 0001." in output
    assert "kaizen_webhook_call_counts" not in inspect(engine).get_table_names()
    assert f"Head is {HEAD}: " in cli(host, "current")
    assert "0001 -> 0002" in cli(host, "upgrade")
    assert "nothing to do" in cli(host, "upgrade")
    with engine.connect() as connection:
        assert connection.scalar(select(Registration.id)) == kept
    failed = host.app.test_cli_runner().invoke(args=["webhooks", "db", "upgrade", "0009"])
    assert failed.exit_code == 1 and "0009" in failed.output
    assert host_alembic_version(engine) == [HOST_VERSION]
    engine.dispose()


def test_a_process_reads_the_revision_once(make_host: Callable[..., Host], tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    first = make_host("sqlite", KAIZEN_WEBHOOKS_DATABASE_URI=url)
    with first.app.app_context():
        get_state().database.create_tables()  # a new database: made and stamped
    second = make_host("sqlite", KAIZEN_WEBHOOKS_DATABASE_URI=url)  # as another process
    with second.app.app_context():
        database = get_state().database
        statements: list[str] = []
        event.listen(database.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        database.create_tables()
        database.create_tables()
        with database.independent_session() as session:
            assert session.scalar(select(Registration.id)) is None
        # The revision and the table names, then the read itself: nothing more, once.
        assert len(statements) == 3 and VERSION_TABLE in statements[0]
        database.drop_tables()  # init-db --drop: the version table goes too
        assert inspect(database.engine).get_table_names() == []
        database.create_tables()
        assert revision_of(database.engine) == HEAD
