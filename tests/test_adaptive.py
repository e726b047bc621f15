"""Adaptive concurrency: each registration's attempts at once grow while its receiver answers
2xx quickly and halve on timeouts, 5xx, 429 and failed connections, within ``[1,
KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION]``; against real receivers on loopback."""

from __future__ import annotations

import threading
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.delivery.adaptive import Concurrency, Verdict, verdict_of
from flask_kaizen_webhooks.delivery.transfer import SendResult
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import DELIVERY_CONFIG, Host
from tests.receivers import Received, Reply, wait_until
from tests.test_ordering import register

#: A backlog for one fast receiver, answering in 20 ms.
BACKLOG, ANSWER_AFTER = 400, 0.02
CONFIG = {
    **DELIVERY_CONFIG,
    "KAIZEN_WEBHOOKS_WORKERS": 16,
    "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 8,
    "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST": 16,
    "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 1.0,
}


def answer(status: int | None = 200, elapsed: float = 0.01, timed_out: bool = False) -> SendResult:
    error = None if status is not None else "connection refused"
    return SendResult(status, elapsed, b"", None, None, error, timed_out)


@pytest.mark.parametrize(
    ("result", "verdict"),
    [
        (answer(200), Verdict.GROW),
        (answer(204, elapsed=2.0), Verdict.GROW),  # if quick for its receiver (see below)
        (answer(404), Verdict.HOLD),
        (answer(410), Verdict.HOLD),
        (answer(429), Verdict.CUT),
        (answer(500), Verdict.CUT),
        (answer(503), Verdict.CUT),
        (answer(None), Verdict.CUT),
        (answer(None, elapsed=1.0, timed_out=True), Verdict.CUT),
    ],
)
def test_what_each_answer_does_to_the_limit(result: SendResult, verdict: Verdict) -> None:
    assert verdict_of(result) is verdict


def test_the_limit_grows_by_one_a_round_and_halves_once_a_round() -> None:
    limits = Concurrency(8, adaptive=True)
    assert limits.limit("r") == 1
    grown = [limits.observe("r", Verdict.GROW, 0.01) for _ in range(40)]
    assert limits.limit("r") == 8  # 1 + 1 + 1/2 + 1/2 + 1/3 ... up to the cap
    assert grown.count(True) == 7
    # Eight failures of attempts under way together: one cut, not eight.
    for _ in range(8):
        limits.observe("r", Verdict.CUT, 0.5)
    assert limits.limit("r") == 4
    # An attempt started after that cut cuts again; never below one.
    for _ in range(5):
        limits.observe("r", Verdict.CUT, 0.0)
    assert limits.limit("r") == 1
    assert limits.limit("other") == 1
    fixed = Concurrency(8, adaptive=False)
    fixed.observe("r", Verdict.CUT, 0.0)
    assert fixed.limit("r") == 8


def test_a_steady_slow_receiver_grows_and_one_slowing_down_does_not() -> None:
    limits = Concurrency(8, adaptive=True)
    for _ in range(40):  # two seconds each, steadily: quick for this receiver
        limits.observe("steady", Verdict.GROW, 2.0)
    assert limits.limit("steady") == 8
    limits.observe("slowing", Verdict.GROW, 0.02)
    limits.observe("slowing", Verdict.GROW, 0.02)
    assert limits.limit("slowing") == 2
    for elapsed in (0.2, 0.3, 0.4, 0.5):  # ten times its usual time and more
        limits.observe("slowing", Verdict.GROW, elapsed)
    assert limits.limit("slowing") == 2
    # A receiver slower for good: its usual time follows, and it grows again.
    for _ in range(60):
        limits.observe("slowing", Verdict.GROW, 0.5)
    assert limits.limit("slowing") > 2


def statuses(host: Host, topic: str) -> list[str]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return list(session.scalars(select(Delivery.status).where(Delivery.topic == topic)))


def fire(host: Host, topic: str, count: int) -> None:
    with host.app.app_context():
        for n in range(count):
            host.webhooks.trigger(topic, {"n": n})


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_fast_receiver_gets_more_at_once_while_a_hanging_and_a_failing_one_get_one(
    make_host: Any, backend: str, receiver: Any
) -> None:
    hang = threading.Event()

    def respond(request: Received, _count: int) -> Reply:
        if request.path == "/hanging":
            return Reply(wait=hang)
        if request.path == "/failing":
            return Reply(status=503, delay=ANSWER_AFTER)
        return Reply(delay=ANSWER_AFTER)

    host = make_host(backend, **CONFIG)
    server = receiver(respond)
    register(host, server.url("/fast"))
    hanging = host.app.test_client().post(
        "/v2/webhooks/registrations",
        json={"topic": "booking_updated", "url": server.url("/hanging"), "secret": "s" * 20},
        headers={"Authorization": "Bearer admin-token"},
    )
    assert hanging.status_code == 201
    failing = host.app.test_client().post(
        "/v2/webhooks/registrations",
        json={"topic": "booking_state_changed", "url": server.url("/failing"), "secret": "s" * 20},
        headers={"Authorization": "Bearer admin-token"},
    )
    assert failing.status_code == 201
    fire(host, "booking_updated", 6)
    fire(host, "booking_state_changed", 30)
    fire(host, "profile_updated", BACKLOG)
    wait_until(lambda: statuses(host, "profile_updated").count("succeeded") == BACKLOG, 60)
    assert server.peak_by_path["/fast"] >= 4  # grew well past the fixed cap of two
    # Its floor, however long the others run: each attempt starts once the one before timed
    # out (the receiver still holds the abandoned ones, so its own count would overstate).
    wait_until(lambda: sum(r.path == "/hanging" for r in server.received) >= 3, 10)
    hung = sorted(r.at for r in server.received if r.path == "/hanging")
    assert all(b - a >= 0.75 * CONFIG["KAIZEN_WEBHOOKS_ASYNC_TIMEOUT"] for a, b in pairwise(hung))
    assert server.peak_by_path["/failing"] == 1
    hang.set()


def test_without_adaptation_a_registration_holds_the_fixed_cap(
    make_host: Any, receiver: Any
) -> None:
    config = {
        **CONFIG,
        "KAIZEN_WEBHOOKS_ADAPTIVE_CONCURRENCY": False,
        "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 2,
    }
    host = make_host("sqlite", **config)
    server = receiver(lambda request, n: Reply(delay=ANSWER_AFTER))
    register(host, server.url("/fast"))
    fire(host, "profile_updated", 60)
    wait_until(lambda: statuses(host, "profile_updated").count("succeeded") == 60, 30)
    assert server.peak_by_path["/fast"] == 2
