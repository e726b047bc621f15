"""Several dispatchers on one database, and clean shutdowns: each webhook once, none lost."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import jose.jws
from sqlalchemy import event, func, select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage.tables import Attempt, Delivery
from tests.conftest import DELIVERY_CONFIG, register
from tests.receivers import RawServer, Reply, drip, wait_until

PROFILE = {"id": "p-1", "email": "ann@example.com"}


def request_ids(server: Any) -> Counter[str]:
    return Counter(
        json.loads(jose.jws.get_unverified_claims(r.body.decode()))["webhook_request_id"]
        for r in server.received
    )


def counts(host: Any) -> dict[str, int]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        return {status: number for status, number in rows}


def enqueue(host: Any, events: int) -> list[str]:
    ids: list[str] = []
    with host.app.app_context():
        for n in range(events):
            ids += host.webhooks.trigger("profile_updated", {**PROFILE, "n": n})
    return ids


def test_two_dispatchers_on_postgres_deliver_each_webhook_once(
    make_host: Any, receiver: Any
) -> None:
    server = receiver()
    writer = make_host("postgres", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(writer, server.url("/a"))
    register(writer, server.url("/b"))
    url = writer.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    ids = enqueue(writer, 150)
    assert len(ids) == 300
    dispatchers = [
        make_host("postgres", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_DATABASE_URI=url, keep_tables=True)
        for _ in range(2)
    ]
    for host in dispatchers:
        host.webhooks.start(host.app)
    wait_until(lambda: counts(writer).get("succeeded") == 300, timeout=60)
    received = request_ids(server)
    assert set(received) == set(ids)
    assert max(received.values()) == 1, "a webhook was sent twice"
    with writer.app.app_context(), get_state().database.independent_session() as session:
        assert session.scalar(select(func.count()).select_from(Attempt)) == 300


def test_clean_shutdown_stops_taking_work_and_loses_none(
    make_host: Any, backend: str, receiver: Any
) -> None:
    gate = threading.Event()
    server = receiver(lambda request, n: Reply(wait=gate))
    # At the registration's cap from the first attempt (not adapting up to it).
    config = {"KAIZEN_WEBHOOKS_WORKERS": 2, "KAIZEN_WEBHOOKS_ADAPTIVE_CONCURRENCY": False}
    host = make_host(backend, **{**DELIVERY_CONFIG, **config})
    register(host, server.url())
    ids = enqueue(host, 20)
    host.webhooks.start(host.app)
    server.wait_for(2)  # both workers are busy with a slow receiver
    stopper = threading.Thread(target=host.webhooks.shutdown, args=(host.app, 30))
    stopper.start()
    dispatcher = host.app.extensions["kaizen_webhooks"].executor
    wait_until(dispatcher._stopping.is_set)  # it takes no more work...
    gate.set()  # ...the attempts in flight finish...
    stopper.join(30)
    assert not stopper.is_alive()
    sent_before_stop = len(server.received)
    assert sent_before_stop < 20
    # ...and everything else is still pending (and unclaimed) in the outbox.
    assert counts(host) == {"succeeded": sent_before_stop, "pending": 20 - sent_before_stop}
    host.webhooks.start(host.app)
    wait_until(lambda: counts(host) == {"succeeded": 20})
    assert set(request_ids(server)) == set(ids)


def test_hanging_and_dripping_receivers_do_not_hold_up_a_healthy_one(
    make_host: Any, receiver: Any
) -> None:
    config = {
        **DELIVERY_CONFIG,
        "KAIZEN_WEBHOOKS_WORKERS": 5,
        "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST": 5,
        "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 1,
        "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 20,
        "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [],
    }
    host = make_host("sqlite", **config)
    hanging = [receiver() for _ in range(3)]
    for rogue in hanging:
        rogue.responder = lambda request, n, rogue=rogue: Reply(wait=rogue.release)
    dripping = RawServer(drip)  # one byte a second, for as long as the attempt lasts
    healthy = receiver()
    for rogue in hanging:
        register(host, rogue.url(), topic="booking_updated")
    register(host, dripping.url(), topic="booking_updated")
    register(host, healthy.url())
    with host.app.app_context():
        for n in range(5):  # each rogue has a backlog that would otherwise fill every worker
            host.webhooks.trigger("booking_updated", {"n": n})
    for rogue in hanging:
        rogue.wait_for(1)
    wait_until(lambda: dripping.connections == 1)
    with host.app.app_context():
        for n in range(10):
            host.webhooks.trigger("profile_updated", {"n": n})
    healthy.wait_for(10, timeout=10)  # the rogues hang for 20 s: these got through beside them
    # Each rogue holds one worker at most: one request each, however long its backlog.
    assert [len(rogue.received) for rogue in hanging] == [1, 1, 1]
    assert dripping.connections == 1
    dripping.close()


def test_a_full_memory_queue_overflows_to_the_outbox(make_host: Any, receiver: Any) -> None:
    gate = threading.Event()
    server = receiver(lambda request, n: Reply(wait=gate) if n == 1 else Reply())
    host = make_host(
        "sqlite",
        **{**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_WORKERS": 1, "KAIZEN_WEBHOOKS_MAX_QUEUE": 2},
    )
    register(host, server.url())
    host.webhooks.start(host.app)
    ids = enqueue(host, 1)
    server.wait_for(1)  # the only attempt at once is busy; memory holds two ids at most
    ids += enqueue(host, 30)
    dispatcher = host.app.extensions["kaizen_webhooks"].executor
    assert dispatcher._sender.load <= 2 and dispatcher._in_flight.parked <= 2
    gate.set()
    wait_until(lambda: counts(host) == {"succeeded": 31})
    assert set(request_ids(server)) == set(ids)


def each_is_sent_once(host: Any, receiver: Any, *, count: int, answer_delay: float) -> None:
    """Enqueue ``count`` deliveries to a receiver that answers after ``answer_delay`` seconds;
    all succeed, each sent exactly once."""
    server = receiver(lambda request, n: Reply(delay=answer_delay))
    register(host, server.url())
    ids = enqueue(host, count)
    wait_until(lambda: counts(host) == {"succeeded": count}, timeout=30)
    assert request_ids(server) == Counter({delivery_id: 1 for delivery_id in ids})


def test_work_waiting_longer_than_its_lease_is_renewed_not_sent_twice(
    make_host: Any, receiver: Any
) -> None:
    # One worker, attempts of 1.4 s, leases of 4.5 s: claimed deliveries wait in memory for
    # longer than their lease.
    host = make_host(
        "sqlite",
        **{
            **DELIVERY_CONFIG,
            "KAIZEN_WEBHOOKS_WORKERS": 1,
            "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 3.5,
            "KAIZEN_WEBHOOKS_CONNECT_TIMEOUT": 0.5,
            "KAIZEN_WEBHOOKS_CLAIM_LEASE": 4.5,
        },
    )
    each_is_sent_once(host, receiver, count=5, answer_delay=1.4)


def test_work_that_waits_in_line_past_its_lease_is_renewed_before_it_is_sent(
    make_host: Any, receiver: Any
) -> None:
    # One attempt at once, each taking 0.6 s, eight in line at once (no per-host cap to park
    # them), leases of 4 s covering a 3 s attempt: the last ones start after their lease
    # would have let another claim take them over.
    host = make_host(
        "sqlite",
        **{
            **DELIVERY_CONFIG,
            "KAIZEN_WEBHOOKS_WORKERS": 1,
            "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 2.5,
            "KAIZEN_WEBHOOKS_CONNECT_TIMEOUT": 0.5,
            "KAIZEN_WEBHOOKS_CLAIM_LEASE": 4,
            "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 10,
            "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST": 10,
        },
    )
    each_is_sent_once(host, receiver, count=8, answer_delay=0.6)


def test_a_hanging_registration_parks_its_backlog_without_churning_the_outbox(
    make_host: Any, receiver: Any
) -> None:
    host = make_host(
        "sqlite",
        **{
            **DELIVERY_CONFIG,
            "KAIZEN_WEBHOOKS_WORKERS": 4,
            "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 1,
            "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 20,
        },
    )
    hanging = receiver()
    hanging.responder = lambda request, n: Reply(wait=hanging.release)
    healthy = receiver()
    register(host, hanging.url(), topic="booking_updated")
    register(host, healthy.url())
    give_backs: list[str] = []

    def count_give_backs(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # claims.release_claims: claim_token = NULL where the id and the token match.
        if statement.startswith("UPDATE kaizen_webhook_deliveries") and statement.endswith(
            "AND kaizen_webhook_deliveries.claim_token = ?"
        ):
            give_backs.append(statement)

    with host.app.app_context():
        engine = get_state().database.engine
    event.listen(engine, "before_cursor_execute", count_give_backs)
    try:
        with host.app.app_context():
            for n in range(40):
                host.webhooks.trigger("booking_updated", {"n": n})
        hanging.wait_for(1)
        for n in range(10):
            with host.app.app_context():
                host.webhooks.trigger("profile_updated", {"n": n})
            time.sleep(0.1)  # two seconds of polling beside the hanging backlog
        healthy.wait_for(10, timeout=10)
    finally:
        event.remove(engine, "before_cursor_execute", count_give_backs)
    assert len(hanging.received) == 1
    # Parked in memory and left in the outbox while the host is saturated: the backlog goes
    # back at most once a round, not on every poll (some hundreds of writes in two seconds).
    assert len(give_backs) <= 3, give_backs


def test_an_attempt_that_raises_frees_its_slot_for_the_work_parked_behind_it(
    make_host: Any, receiver: Any, monkeypatch: Any
) -> None:
    import flask_kaizen_webhooks.delivery.engine as threads

    real_conclude = threads.conclude
    raised: list[str] = []

    def conclude_raising_once(state: Any, claimed: Any, *args: Any) -> Any:
        if not raised:
            raised.append(claimed.delivery_id)
            raise RuntimeError("a defect in one attempt")
        return real_conclude(state, claimed, *args)

    monkeypatch.setattr(threads, "conclude", conclude_raising_once)
    host = make_host(
        "sqlite",
        **{
            **DELIVERY_CONFIG,
            "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 1,
            "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST": 1,
            "KAIZEN_WEBHOOKS_CLAIM_LEASE": 5,
            "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 3,
            "KAIZEN_WEBHOOKS_CONNECT_TIMEOUT": 1,
        },
    )
    server = receiver()
    register(host, server.url())
    ids = enqueue(host, 6)
    # One slot for the host: had the attempt whose handling raised kept it, the other five
    # would wait in memory for ever. That one was sent, but its result not recorded: it is
    # sent again once its claim runs out (at least once).
    wait_until(lambda: counts(host) == {"succeeded": 6}, timeout=30)
    expected = Counter({delivery_id: 1 for delivery_id in ids})
    expected[raised[0]] = 2
    assert request_ids(server) == expected
