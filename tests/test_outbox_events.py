"""Events fired inside the host's transaction: one outbox row, whatever the number of
registrations, fanned out into deliveries after the commit."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jose.jws
import pytest
from sqlalchemy import func, select, text

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.clock import as_utc
from flask_kaizen_webhooks.storage import outbox
from flask_kaizen_webhooks.storage.tables import Delivery, Event
from tests.conftest import DELIVERY_CONFIG, FrozenClock, register
from tests.receivers import wait_until

PROFILE = {"id": "p-1", "email": "john@doe.com"}


def count(host: Any, model: Any) -> int:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize("server", ["sqlite", "postgres"])
def test_an_event_in_the_host_transaction_is_one_row_fanned_out_after_the_commit(
    make_host: Any, server: str, receiver: Any
) -> None:
    host = make_host(f"{server}-hostdb", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    targets = [receiver() for _ in range(3)]
    registrations = [register(host, target.url())["id"] for target in targets]
    db = host.db
    with host.app.app_context():
        db.session.execute(text("SELECT 1"))  # the host's transaction is open
        ids = host.webhooks.trigger("profile_updated", PROFILE)
        db.session.commit()
    assert len(set(ids)) == 3
    assert (count(host, Event), count(host, Delivery)) == (1, 0)  # no dispatcher here

    fired = datetime.now(UTC)
    time.sleep(0.05)
    expanded = datetime.now(UTC)
    with host.app.app_context(), get_state().database.writing() as session:
        assert sorted(outbox.expand_events(session, now=expanded)) == sorted(ids)
    with host.app.app_context(), get_state().database.independent_session() as session:
        made = {d.id: d for d in session.scalars(select(Delivery))}
        assert session.scalar(select(func.count()).select_from(Event)) == 0
    assert set(made) == set(ids)
    for delivery_id, registration_id in zip(ids, registrations, strict=True):
        delivery = made[delivery_id]
        assert (delivery.registration_id, delivery.status, delivery.owner) == (
            registration_id,
            "pending",
            "org-1",
        )
        assert json.loads(delivery.payload) == {**PROFILE, "webhook_request_id": delivery_id}
        # Made when fanned out, due from when the event was fired.
        assert as_utc(delivery.created_at) == expanded
        assert as_utc(delivery.next_attempt_at) < fired
    with host.app.app_context(), get_state().database.writing() as session:
        assert outbox.expand_events(session, now=datetime.now(UTC)) == []  # nothing twice


@pytest.mark.parametrize("server", ["sqlite", "postgres"])
def test_the_dispatcher_fans_out_and_delivers_after_the_commit_and_a_rollback_leaves_nothing(
    make_host: Any, server: str, receiver: Any
) -> None:
    host = make_host(f"{server}-hostdb", **DELIVERY_CONFIG)
    target = receiver()
    for n in range(10):
        register(host, target.url(f"/hook{n}"))
    db = host.db
    with host.app.app_context():
        db.session.execute(text("SELECT 1"))  # the host's transaction is open
        rolled_back = host.webhooks.trigger("profile_updated", PROFILE)
        db.session.rollback()
        db.session.execute(text("SELECT 1"))  # and another one
        ids = host.webhooks.trigger("profile_updated", PROFILE)
        # Nothing is handed over before the host commits.
        time.sleep(0.3)
        assert target.received == []
        db.session.commit()
    target.wait_for(10)
    wait_until(lambda: count(host, Event) == 0 and count(host, Delivery) == 10)
    time.sleep(0.3)  # several poll intervals: the rolled-back event never appears
    request_ids = [
        json.loads(jose.jws.get_unverified_claims(r.body.decode()))["webhook_request_id"]
        for r in target.received
    ]
    assert sorted(request_ids) == sorted(ids)  # each once; the rolled-back event never
    with host.app.app_context(), get_state().database.independent_session() as session:
        assert set(session.scalars(select(Delivery.id))) == set(ids)
    assert not set(rolled_back) & set(ids)


def test_two_transactions_fanning_out_at_once_never_make_a_delivery_twice(make_host: Any) -> None:
    host = make_host("postgres-hostdb", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(host, "https://hooks.example.com/a")
    with host.app.app_context():
        for n in range(5):
            host.db.session.execute(text("SELECT 1"))
            host.webhooks.trigger("profile_updated", {**PROFILE, "n": n})
            host.db.session.commit()
        database = get_state().database
        with database.independent_session() as first, database.independent_session() as second:
            taken = outbox.expand_events(first, now=datetime.now(UTC), limit=3)  # holds three
            second.execute(text("SET LOCAL lock_timeout = '5s'"))  # fails, should it wait
            skipped = outbox.expand_events(second, now=datetime.now(UTC))  # the two others
            first.commit()
            second.commit()
    assert (len(taken), len(skipped)) == (3, 2) and not set(taken) & set(skipped)
    assert count(host, Delivery) == 5


def test_stats_count_events_waiting_for_their_fan_out(make_host: Any) -> None:
    host = make_host("sqlite-hostdb", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(host, "https://hooks.example.com/a")
    with host.app.app_context():
        host.db.session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", PROFILE)
        host.db.session.commit()
    output = host.app.test_cli_runner().invoke(args=["webhooks", "stats"]).output
    assert "events waiting to be fanned out into deliveries: 1" in output
    assert "oldest pending: none" not in output


def test_time_ordered_ids_are_uuid7_unique_and_ordered_by_time() -> None:
    first = outbox.time_ordered_ids(500)
    time.sleep(0.002)
    later = outbox.time_ordered_ids(3)
    assert len(set(first + later)) == 503
    for text_id in first + later:
        parsed = uuid.UUID(text_id)
        assert str(parsed) == text_id
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert max(first) < min(later)  # a later millisecond sorts after


def test_time_ordered_ids_follow_the_order_they_were_made_in_one_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_796_000_000_000_000_000)
    made = [outbox.time_ordered_ids(n % 3 + 1) for n in range(300)]
    ids = [one for batch in made for one in batch]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {uuid.UUID(one).version for one in ids} == {7}
    # A forked child does not count on from its parent's last id.
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(writer, outbox.time_ordered_ids(1)[0].encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(reader, 64).decode()
    assert from_child != outbox.time_ordered_ids(1)[0]


#: A trigger refusing every new delivery, for each database server; then what drops it.
REFUSE_DELIVERIES = {
    "sqlite": [
        "CREATE TRIGGER refuse BEFORE INSERT ON kaizen_webhook_deliveries "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON kaizen_webhook_deliveries "
        "FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}
ACCEPT_DELIVERIES = {
    "sqlite": ["DROP TRIGGER refuse"],
    "postgresql": ["DROP TRIGGER refuse ON kaizen_webhook_deliveries", "DROP FUNCTION refuse()"],
}


def test_a_write_that_fails_outside_a_host_transaction_leaves_no_transaction_open(
    host: Any,
) -> None:
    # The deliveries are the extension's to commit there: when the database refuses them (or
    # goes away), their transaction is rolled back, so that the session (the host's, with a
    # shared db) goes on working.
    register(host, "https://hooks.example.com/a")
    with host.app.app_context():
        state = get_state()
        engine = state.database.engine
        session = host.db.session() if host.db is not None else state.database.session
        with engine.begin() as connection:
            for statement in REFUSE_DELIVERIES[engine.dialect.name]:
                connection.execute(text(statement))
        try:
            with pytest.raises(Exception, match="refused"):
                host.webhooks.trigger("profile_updated", PROFILE)
            assert not session.in_transaction()
            assert session.execute(text("SELECT 1")).scalar() == 1
            session.rollback()
        finally:
            with engine.begin() as connection:
                for statement in ACCEPT_DELIVERIES[engine.dialect.name]:
                    connection.execute(text(statement))
        assert len(host.webhooks.trigger("profile_updated", PROFILE)) == 1


@pytest.mark.parametrize("server", ["sqlite", "postgres"])
def test_an_event_is_due_from_the_commit_of_a_long_transaction_and_a_rollback_forgets_it(
    make_host: Any, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, clock, fired_at = dated_events(make_host, server)
    dated: list[list[str]] = []
    date_events = outbox.date_events

    def dating(connection: Any, event_ids: Any, *, now: datetime) -> None:
        dated.append(list(event_ids))
        date_events(connection, event_ids, now=now)

    monkeypatch.setattr(outbox, "date_events", dating)
    db = host.db
    with host.app.app_context():  # committed within 20 ms: left as fired, with no UPDATE
        db.session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", PROFILE)
        clock.advance(0.015)
        db.session.commit()
    assert dated == [] and len(fired_at()) == 1
    with host.app.app_context():  # rolled back: nothing left to date at the next commit
        db.session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", PROFILE)
        db.session.rollback()
        db.session.execute(text("SELECT 1"))
        clock.advance(10)
        db.session.commit()
    assert dated == []
    with host.app.app_context():  # the request goes on: dated when it commits
        db.session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", PROFILE)
        clock.advance(0.021)
        db.session.commit()
    [[late]] = dated
    assert fired_at()[late] == clock.now()


def dated_events(
    make_host: Any, server: str = "sqlite"
) -> tuple[Any, FrozenClock, Callable[[], dict[str, datetime]]]:
    """A host sharing its ``db`` on ``server``, sending nothing, with one registration; its
    clock, frozen; and a function reading when each waiting event is dated."""
    host = make_host(f"{server}-hostdb", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(host, "http://127.0.0.1:9/never")
    clock = get_state(host.app).clock = FrozenClock(time.time())

    def dates() -> dict[str, datetime]:
        with host.app.app_context(), get_state().database.independent_session() as session:
            return {e.id: as_utc(e.created_at) for e in session.scalars(select(Event))}

    return host, clock, dates


def test_savepoints_do_not_end_the_transaction_an_event_is_dated_by(make_host: Any) -> None:
    host, clock, dates = dated_events(make_host)
    db = host.db
    with host.app.app_context():
        db.session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", PROFILE)
        clock.advance(0.005)
        with db.session.begin_nested():  # released, early: the transaction goes on
            db.session.execute(text("SELECT 1"))
        savepoint = db.session.begin_nested()
        host.webhooks.trigger("profile_updated", {**PROFILE, "id": "p-2"})  # undone below
        savepoint.rollback()
        clock.advance(2)
        db.session.commit()
    assert list(dates().values()) == [clock.now()]


def test_a_session_closed_unfinished_leaves_no_event_to_date_later(make_host: Any) -> None:
    host, clock, dates = dated_events(make_host)
    db = host.db
    with host.app.app_context():
        session = db.session()
        session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", PROFILE)  # written in, then closed
        session.close()
        session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", PROFILE)  # committed within 20 ms
        session.commit()
        fired = clock.now()
        clock.advance(5)
        session.execute(text("SELECT 1"))
        session.commit()  # an unrelated commit later dates nothing
    assert list(dates().values()) == [fired]


def test_events_are_dated_in_batches(make_host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "DATE_BATCH", 2)
    host, clock, dates = dated_events(make_host)
    with host.app.app_context():
        host.db.session.execute(text("SELECT 1"))
        for n in range(5):
            host.webhooks.trigger("profile_updated", {**PROFILE, "id": f"p-{n}"})
        clock.advance(1)
        host.db.session.commit()
    assert list(dates().values()) == [clock.now()] * 5
