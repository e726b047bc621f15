"""Rate limits: a registration's ``max_per_second`` (or the operator's default) is never
exceeded in any second, by one process or by two ``flask webhooks worker`` processes on the
PostgreSQL server; deliveries beyond it wait and are never failed for it."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import DELIVERY_CONFIG, Host
from tests.processes import HostProcess, delivered_by, host_environment, python
from tests.receivers import Receiver, wait_until
from tests.test_ordering import register


def most_in_one_second(server: Receiver, path: str) -> int:
    """The most requests to ``path`` that arrived within any one second (sliding)."""
    times = sorted(r.at for r in server.received if r.path == path)
    return max(
        (sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times)), default=0
    )


def deliveries(host: Host) -> list[tuple[str, int]]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return [tuple(row) for row in session.execute(select(Delivery.status, Delivery.attempts))]


def fire(host: Host, count: int) -> None:
    with host.app.app_context():
        for n in range(count):
            host.webhooks.trigger("profile_updated", {"n": n})


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_one_process_keeps_to_the_rate_and_the_operator_default(
    make_host: Any, backend: str, receiver: Any
) -> None:
    config = {**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_DEFAULT_MAX_PER_SECOND": 5}
    host = make_host(backend, **config)
    server = receiver()
    register(host, server.url("/own"), max_per_second=10)
    register(host, server.url("/default"))
    fire(host, 30)
    wait_until(lambda: len(deliveries(host)) == 60, timeout=10)
    wait_until(lambda: [s for s, _ in deliveries(host)].count("succeeded") == 60, timeout=30)
    assert most_in_one_second(server, "/own") <= 10
    assert most_in_one_second(server, "/default") <= 5
    assert all(attempts == 1 for _, attempts in deliveries(host))  # waited, never failed
    # Not held far below the rate either: 30 at 10 a second span about three seconds.
    own = sorted(r.at for r in server.received if r.path == "/own")
    assert own[-1] - own[0] < 30 / 10 * 1.5


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[HostProcess]]:
    started: list[HostProcess] = []
    yield started
    for worker in started:
        worker.stop()


def test_two_worker_processes_together_keep_to_max_per_second(
    make_host: Any, receiver: Any, workers: list[HostProcess], tmp_path: Path
) -> None:
    host = make_host("postgres", KAIZEN_WEBHOOKS_EXECUTOR="none", **DELIVERY_CONFIG)
    server = receiver()
    register(host, server.url("/limited"), max_per_second=20)
    noted = tmp_path / "delivered"
    env = host_environment(
        KWT_DATABASE_URI=host.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"], KWT_DELIVERED=str(noted)
    )
    command = [python(), "-m", "flask", "--app", "tests.worker_host:create_app", "webhooks"]
    fire(host, 100)
    for _ in range(2):
        workers.append(
            HostProcess([*command, "worker"], env, listening=r"Sending webhooks, up to \d+")
        )
    wait_until(lambda: [s for s, _ in deliveries(host)].count("succeeded") == 100, timeout=30)
    assert most_in_one_second(server, "/limited") <= 20
    senders = set().union(*delivered_by(noted).values())
    assert len(senders) == 2, senders  # both processes sent, under the one rate
    times = sorted(r.at for r in server.received)
    assert times[-1] - times[0] < 100 / 20 * 1.5


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_start_times_are_reserved_evenly_and_never_twice(make_host: Any, backend: str) -> None:
    from datetime import timedelta

    from flask_kaizen_webhooks.storage import pacing

    host = make_host(backend, **DELIVERY_CONFIG)
    rid = register(host, "http://127.0.0.1:9/r", max_per_second=10)
    with host.app.app_context():
        state = get_state()
    now = state.clock.now()
    horizon = now + timedelta(seconds=1)
    with host.app.app_context(), state.database.writing() as session:
        first = pacing.reserve(
            session, registration_id=rid, per_second=10, count=5, now=now, horizon=horizon
        )
    with host.app.app_context(), state.database.writing() as session:
        second = pacing.reserve(
            session, registration_id=rid, per_second=10, count=50, now=now, horizon=horizon
        )
        beyond = pacing.reserve(
            session, registration_id=rid, per_second=10, count=1, now=now, horizon=horizon
        )
    times = first + second
    assert first[0] == now and len(first) == 5
    gaps = {round((b - a).total_seconds(), 6) for a, b in pairwise(times)}
    assert gaps == {0.11}
    assert times[-1] <= horizon and beyond == []  # nothing past the horizon, nothing twice


def test_a_stop_gives_back_what_waits_for_its_time_and_a_restart_sends_it(
    make_host: Any, receiver: Any
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver()
    register(host, server.url("/slow"), max_per_second=2)
    fire(host, 6)
    wait_until(lambda: len(server.received) >= 1)
    host.webhooks.shutdown(host.app)
    with host.app.app_context(), get_state().database.independent_session() as session:
        rows = session.execute(select(Delivery.status, Delivery.claim_token)).all()
    assert sum(status == "pending" for status, _ in rows) >= 3
    assert all(token is None for _, token in rows)  # given back, not left to a lease
    host.webhooks.start(host.app)
    wait_until(lambda: [s for s, _ in deliveries(host)].count("succeeded") == 6, timeout=15)
    assert most_in_one_second(server, "/slow") <= 2
