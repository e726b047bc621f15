"""Asynchronous topics: the outbox, the background workers, retries and their outcomes."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jose.jws
import pytest
from sqlalchemy import select, update

from flask_kaizen_webhooks import get_state, signals
from flask_kaizen_webhooks.storage.tables import Attempt, Delivery
from tests.conftest import ADMIN, DELIVERY_CONFIG, register
from tests.receivers import Reply, wait_until

SECRET = "signature_secret_0123"
PROFILE = {"id": "p-1", "email": "ann@example.com", "rev": "2-abc", "firstName": "Ann"}


@pytest.fixture
def host(make_host: Any, backend: str) -> Any:
    return make_host(backend, **DELIVERY_CONFIG)


def deliveries(host: Any) -> dict[str, Delivery]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return {row.id: row for row in session.scalars(select(Delivery))}


def attempts(host: Any, delivery_id: str) -> list[Attempt]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        query = select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(Attempt.number)
        return list(session.scalars(query))


def status_of(host: Any, delivery_id: str) -> str:
    return deliveries(host)[delivery_id].status


def fire(host: Any, topic: str = "profile_updated", payload: Any = PROFILE) -> list[str]:
    with host.app.app_context():
        [(_, ids)] = getattr(signals, topic).send(host.app, payload=payload)
    return list(ids)


def record(signal: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    signal.connect(lambda sender, **kw: seen.append(kw), weak=False)
    return seen


def test_signal_queues_and_workers_deliver_signed_payload(host: Any, receiver: Any) -> None:
    server = receiver()
    registration = register(host, server.url("/profile_updated"), secret=SECRET)
    succeeded = record(signals.delivery_succeeded)
    try:
        [delivery_id] = fire(host)
        [request] = server.wait_for(1)
        payload = json.loads(jose.jws.verify(request.body.decode(), SECRET, algorithms=["HS256"]))
        assert payload == {**PROFILE, "webhook_request_id": delivery_id}
        assert request.headers["Webhook-Id"] == delivery_id
        wait_until(lambda: status_of(host, delivery_id) == "succeeded")
        wait_until(lambda: succeeded)
    finally:
        signals.delivery_succeeded.receivers.clear()
    assert succeeded[0]["delivery_id"] == delivery_id
    assert succeeded[0]["registration_id"] == registration["id"]
    row = deliveries(host)[delivery_id]
    assert (row.attempts, row.last_status_code, row.mode) == (1, 200, "async")
    assert [a.status_code for a in attempts(host, delivery_id)] == [200]


def test_the_signal_may_be_sent_by_current_app(host: Any, receiver: Any) -> None:
    from flask import current_app

    server = receiver()
    register(host, server.url())
    with host.app.app_context():
        [(_, ids)] = signals.profile_updated.send(current_app, payload=PROFILE)
    [delivery_id] = ids
    assert set(deliveries(host)) == {delivery_id}
    server.wait_for(1)
    wait_until(lambda: status_of(host, delivery_id) == "succeeded")


def test_one_delivery_per_registration_each_with_its_own_request_id(
    host: Any, receiver: Any
) -> None:
    servers = [receiver() for _ in range(3)]
    for server in servers:
        register(host, server.url())
    register(host, servers[0].url("/other-topic"), topic="booking_updated")
    ids = fire(host)
    assert len(set(ids)) == 3
    seen = set()
    for server in servers:
        [request] = server.wait_for(1)
        seen.add(
            json.loads(jose.jws.get_unverified_claims(request.body.decode()))["webhook_request_id"]
        )
    assert seen == set(ids)


def test_retries_with_backoff_then_success(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=500 if n < 3 else 200, body=b"no"))
    register(host, server.url())
    [delivery_id] = fire(host)
    requests = server.wait_for(3)
    wait_until(lambda: status_of(host, delivery_id) == "succeeded")
    # The same webhook_request_id on every attempt, each freshly signed (iat) and numbered.
    bodies = [jose.jws.get_unverified_claims(r.body.decode()) for r in requests]
    assert len({json.loads(b)["webhook_request_id"] for b in bodies}) == 1
    assert [r.headers["Webhook-Attempt"] for r in requests] == ["1", "2", "3"]
    log = attempts(host, delivery_id)
    assert [a.status_code for a in log] == [500, 500, 200]
    assert [a.error for a in log] == ["HTTP 500", "HTTP 500", None]


def test_schedule_used_up_fails_for_good_with_a_signal(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=502, body=b"bad gateway"))
    register(host, server.url())
    failed = record(signals.delivery_failed)
    try:
        [delivery_id] = fire(host)
        wait_until(lambda: status_of(host, delivery_id) == "failed")
        wait_until(lambda: failed)
    finally:
        signals.delivery_failed.receivers.clear()
    assert len(server.received) == 3  # the first attempt and two retries
    row = deliveries(host)[delivery_id]
    assert (row.attempts, row.last_status_code, row.last_error) == (3, 502, "HTTP 502")
    assert row.response_excerpt == "bad gateway"
    assert failed[0]["delivery_id"] == delivery_id
    assert failed[0]["attempts"] == 3


def test_redirects_are_not_followed_and_count_as_failure(host: Any, receiver: Any) -> None:
    elsewhere = receiver()
    server = receiver(
        lambda request, n: Reply(status=302, headers={"Location": elsewhere.url()}, body=b"")
    )
    register(host, server.url())
    [delivery_id] = fire(host)
    wait_until(lambda: status_of(host, delivery_id) == "failed")
    assert elsewhere.received == []
    assert "redirects are not followed" in (deliveries(host)[delivery_id].last_error or "")


def test_410_gone_disables_the_registration(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=410, body=b"gone"))
    registration = register(host, server.url())
    disabled = record(signals.registration_disabled)
    try:
        [delivery_id] = fire(host)
        wait_until(lambda: status_of(host, delivery_id) == "failed")
        wait_until(lambda: disabled)
    finally:
        signals.registration_disabled.receivers.clear()
    assert len(server.received) == 1  # no retries
    assert disabled[0]["registration_id"] == registration["id"]
    shown = (
        host.app.test_client()
        .get(f"/v2/webhooks/registrations/{registration['id']}", headers=ADMIN)
        .get_json()
    )
    assert shown["state"] == "disabled"
    assert "410" in shown["disabled_reason"]
    assert shown["rev"].startswith("2-")
    assert fire(host) == []  # disabled registrations get nothing


def test_retry_after_on_429_is_honoured(make_host: Any, backend: str, receiver: Any) -> None:
    # The schedule says 60 s; the receiver asks for 1 s and gets it.
    host = make_host(backend, **{**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [60]})
    server = receiver(
        lambda request, n: (
            Reply(status=429, headers={"Retry-After": "1"}, body=b"") if n == 1 else Reply()
        )
    )
    register(host, server.url())
    [delivery_id] = fire(host)
    first, second = server.wait_for(2, timeout=20)
    assert 0.8 <= second.at - first.at < 20
    wait_until(lambda: status_of(host, delivery_id) == "succeeded")


def queued_while_stopped(host: Any, server: Any) -> tuple[dict[str, str], str]:
    """A registration of ``server`` and a delivery queued for it while nothing sends."""
    registration = register(host, server.url())
    with host.app.app_context():
        get_state().executor.stop()
        [delivery_id] = host.webhooks.trigger("profile_updated", PROFILE)
    return registration, delivery_id


def test_deleted_registration_is_not_sent(host: Any, receiver: Any) -> None:
    server = receiver()
    registration, delivery_id = queued_while_stopped(host, server)
    client = host.app.test_client()
    url = f"/v2/webhooks/registrations/{registration['id']}?rev={registration['rev']}"
    assert client.delete(url, headers=ADMIN).status_code == 200
    # Deleting it ended its pending delivery at once.
    assert status_of(host, delivery_id) == "failed"
    assert deliveries(host)[delivery_id].last_error == "the registration was deleted"
    with host.app.app_context():
        get_state().executor.start()
    assert server.received == []


def test_disabled_registration_is_not_sent(host: Any, receiver: Any) -> None:
    server = receiver()
    registration, delivery_id = queued_while_stopped(host, server)
    disabled = host.app.test_cli_runner().invoke(args=["webhooks", "disable", registration["id"]])
    assert disabled.exit_code == 0
    with host.app.app_context():
        get_state().executor.start()
    wait_until(lambda: status_of(host, delivery_id) == "failed")
    assert server.received == []
    assert "deleted or disabled" in (deliveries(host)[delivery_id].last_error or "")


def test_a_registration_that_keeps_failing_is_disabled_and_can_be_enabled(
    make_host: Any, backend: str, receiver: Any
) -> None:
    host = make_host(
        backend,
        **{
            **DELIVERY_CONFIG,
            "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [],
            "KAIZEN_WEBHOOKS_DISABLE_AFTER_FAILURES": 3,
            "KAIZEN_WEBHOOKS_DISABLE_AFTER_SECONDS": 0,
        },
    )
    healthy = {"on": False}
    server = receiver(lambda request, n: Reply() if healthy["on"] else Reply(status=500))
    registration = register(host, server.url())
    for expected in (1, 2, 3):
        [delivery_id] = fire(host)
        wait_until(lambda delivery_id=delivery_id: status_of(host, delivery_id) == "failed")
        assert len(server.received) == expected
    client = host.app.test_client()
    url = f"/v2/webhooks/registrations/{registration['id']}"
    shown = client.get(url, headers=ADMIN).get_json()
    assert shown["state"] == "disabled"
    assert shown["disabled_reason"].startswith("3 deliveries in a row failed for good")
    assert fire(host) == []
    # The owner enables it again; its failure count starts afresh.
    healthy["on"] = True
    body = {"topic": "profile_updated", "url": server.url(), "rev": shown["rev"], "state": "active"}
    assert client.put(url, json=body, headers=ADMIN).status_code == 200
    assert client.get(url, headers=ADMIN).get_json()["disabled_reason"] is None
    [delivery_id] = fire(host)
    wait_until(lambda: status_of(host, delivery_id) == "succeeded")


def test_a_new_app_delivers_what_an_earlier_one_left_pending(
    make_host: Any, backend: str, receiver: Any
) -> None:
    server = receiver()
    first = make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(first, server.url())
    ids = fire(first) + fire(first)
    time.sleep(0.2)
    assert server.received == []  # nothing sends in the first app
    database_url = (
        first.app.config.get("SQLALCHEMY_DATABASE_URI")
        or first.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    )
    key = "SQLALCHEMY_DATABASE_URI" if first.db is not None else "KAIZEN_WEBHOOKS_DATABASE_URI"
    second = make_host(backend, **DELIVERY_CONFIG, **{key: database_url}, keep_tables=True)
    second.app.test_client().get("/")  # the first request starts the dispatcher
    server.wait_for(2)
    wait_until(lambda: all(status_of(second, i) == "succeeded" for i in ids))


def test_an_expired_claim_is_taken_over(host: Any, receiver: Any) -> None:
    server = receiver()
    register(host, server.url())
    with host.app.app_context():
        state = get_state()
        state.executor.stop()
        [delivery_id] = host.webhooks.trigger("profile_updated", PROFILE)
        # A worker of a process that died holds it, with a lease that runs out in a moment.
        lease_ends = state.clock.now() + timedelta(seconds=2)
        with state.database.independent_session() as session, session.begin():
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(claim_token="dead-worker", next_attempt_at=lease_ends)
            )
        state.executor.start()
    [request] = server.wait_for(1)
    assert request.at >= lease_ends.timestamp() - 0.01  # not before the lease ran out
    wait_until(lambda: status_of(host, delivery_id) == "succeeded")


def test_a_host_topic_is_sent_through_its_own_signal(host: Any, receiver: Any) -> None:
    from flask_kaizen_webhooks.signals import topic_signal

    host.webhooks.add_topic("course_completed", "async", "A course was completed.", {"c": 1})
    server = receiver()
    register(host, server.url(), topic="course_completed")
    with host.app.app_context():
        [(_, [delivery_id])] = topic_signal("course_completed").send(host.app, payload={"c": 2})
    [request] = server.wait_for(1)
    assert json.loads(jose.jws.get_unverified_claims(request.body.decode())) == {
        "c": 2,
        "webhook_request_id": delivery_id,
    }
    assert request.headers["Webhook-Topic"] == "course_completed"


def test_iat_is_refreshed_on_every_attempt(host: Any, receiver: Any) -> None:
    from flask_kaizen_webhooks.clock import Clock

    class SteppingClock(Clock):
        """Real time, plus a minute more on every reading of the epoch seconds that signing
        uses: attempts are far apart to it. Leases and schedules keep real time (``now``), so
        claims do not seem to run out while their attempts are under way."""

        def __init__(self) -> None:
            self.readings = 0

        def time(self) -> float:
            self.readings += 1
            return time.time() + 60 * self.readings

        def now(self) -> datetime:
            return datetime.now(UTC)

    get_state(host.app).clock = SteppingClock()
    server = receiver(lambda request, n: Reply(status=500 if n < 3 else 200))
    register(host, server.url())
    fire(host)
    requests = server.wait_for(3)
    iats = [jose.jws.get_unverified_header(r.body.decode())["iat"] for r in requests]
    assert iats == sorted(iats) and len(set(iats)) == 3


def test_an_unexpected_error_while_sending_is_recorded_and_retried(
    host: Any, receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_kaizen_webhooks.delivery import requests as attempt

    server = receiver()
    register(host, server.url())
    calls: list[int] = []
    real_sign = attempt.sign

    def sign_that_breaks_once(*args: Any, **kwargs: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a defect in signing")
        return real_sign(*args, **kwargs)

    monkeypatch.setattr(attempt, "sign", sign_that_breaks_once)
    [delivery_id] = fire(host)
    wait_until(lambda: status_of(host, delivery_id) == "succeeded")
    log = attempts(host, delivery_id)
    assert [(a.status_code, a.error) for a in log] == [
        (None, "internal error: RuntimeError"),
        (200, None),
    ]
    assert len(server.received) == 1
