"""FIFO registrations: their deliveries are attempted one at a time, in the order they were
made, and a delivery being retried holds the ones behind it; in one process, and with two
``flask webhooks worker`` processes on the PostgreSQL server."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import jose.jws
import pytest
from sqlalchemy import select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import ADMIN, DELIVERY_CONFIG, Host
from tests.processes import HostProcess
from tests.receivers import Receiver, Reply, wait_until
from tests.test_celery import celery_env, web  # noqa: F401 (fixtures)
from tests.test_shared_caps import (  # noqa: F401 (fixtures)
    celery_worker,
    start_engines,
    thread_worker,
)

PREFIX = "/v2/webhooks"
#: Deliveries for the FIFO registration; the third fails twice before it succeeds.
COUNT, FLAKY = 20, 2


def register(host: Host, url: str, **options: Any) -> str:
    response = host.app.test_client().post(
        f"{PREFIX}/registrations",
        json={
            "topic": "profile_updated",
            "url": url,
            "secret": "signature_secret_0123",
            **options,
        },
        headers=ADMIN,
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def number_of(body: bytes) -> int:
    return int(json.loads(jose.jws.get_unverified_claims(body.decode()))["n"])


def failing_twice(number: int) -> Callable[[Any, int], Reply]:
    """A responder that answers 503 to the first two attempts of delivery ``number`` on each
    path, after a short wait so that attempts would overlap if they could."""
    failures: dict[str, int] = {}

    def respond(request: Any, _count: int) -> Reply:
        if number_of(request.body) == number and failures.get(request.path, 0) < 2:
            failures[request.path] = failures.get(request.path, 0) + 1
            return Reply(status=503, delay=0.01)
        return Reply(delay=0.01)

    return respond


def statuses(host: Host) -> list[str]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return list(session.scalars(select(Delivery.status)))


def check_in_order(server: Receiver, path: str) -> None:
    """Every request to ``path`` came one at a time, in order, the flaky one three times."""
    check_in_order_from(server, path, flaky=FLAKY, count=COUNT)


def check_in_order_from(server: Receiver, path: str, *, flaky: int, count: int) -> None:
    numbers = [number_of(r.body) for r in server.received if r.path == path]
    assert numbers == [*range(flaky), flaky, flaky, *range(flaky, count)], numbers
    assert server.peak_by_path[path] == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_fifo_registration_gets_every_delivery_in_order_through_a_retry(
    make_host: Any, backend: str, receiver: Any
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG)
    server = receiver(failing_twice(FLAKY))
    register(host, server.url("/fifo"), ordering="fifo")
    register(host, server.url("/any"))
    with host.app.app_context():
        for n in range(COUNT):
            host.webhooks.trigger("profile_updated", {"n": n})
    wait_until(lambda: statuses(host).count("succeeded") == 2 * COUNT, timeout=30)
    check_in_order(server, "/fifo")
    # Unordered, the same deliveries overlap (two at a time, the registration's cap), and the
    # retried one does not hold the others back.
    unordered = [number_of(r.body) for r in server.received if r.path == "/any"]
    assert server.peak_by_path["/any"] == 2
    assert unordered != sorted(unordered)


def test_two_worker_processes_keep_a_fifo_registration_in_order(
    make_host: Any,
    receiver: Any,
    thread_worker: Callable[[str], HostProcess],  # noqa: F811
) -> None:
    host = make_host("postgres", KAIZEN_WEBHOOKS_EXECUTOR="none", **DELIVERY_CONFIG)
    server = receiver(failing_twice(FLAKY))
    register(host, server.url("/fifo"), ordering="fifo")
    database = host.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    for _ in range(2):
        thread_worker(database)
    with host.app.app_context():
        for n in range(COUNT):
            host.webhooks.trigger("profile_updated", {"n": n})
    wait_until(lambda: statuses(host).count("succeeded") == COUNT, timeout=30)
    check_in_order(server, "/fifo")


def test_two_celery_workers_keep_a_fifo_registration_in_order_and_to_its_rate(
    web: Host,  # noqa: F811
    celery_worker: Any,  # noqa: F811
    receiver: Any,
) -> None:
    """On Celery: two worker processes, a FIFO registration through a retry, and a
    rate-limited one kept to 10 a second (see :mod:`tests.test_rates`)."""
    from tests.test_rates import most_in_one_second

    server = receiver(failing_twice(FLAKY))
    register(web, server.url("/fifo"), ordering="fifo")
    register(web, server.url("/paced"), max_per_second=10)
    start_engines(web, [celery_worker(), celery_worker()])
    with web.app.app_context():
        for n in range(COUNT):
            web.webhooks.trigger("profile_updated", {"n": n})
    wait_until(lambda: statuses(web).count("succeeded") == 2 * COUNT, timeout=60)
    check_in_order(server, "/fifo")
    assert most_in_one_second(server, "/paced") <= 10


def test_the_portal_shows_a_registrations_ordering_and_rate(make_host: Any) -> None:
    from tests.test_portal_forms import open_portal

    host = make_host("sqlite", **DELIVERY_CONFIG)
    ordered = register(host, "http://127.0.0.1:9/a", ordering="fifo", max_per_second=20)
    plain = register(host, "http://127.0.0.1:9/b")
    browser = open_portal(host)
    page = browser.get(f"{PREFIX}/portal/endpoints/{ordered}").get_data(as_text=True)
    assert "one at a time, in the order made" in page and "20 a second" in page
    page = browser.get(f"{PREFIX}/portal/endpoints/{plain}").get_data(as_text=True)
    assert "any order, several at once" in page
    assert re.search(r"<dt>Rate limit</dt><dd>none</dd>", page)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_fifo_backlog_waits_out_of_the_way_and_the_next_goes_as_one_ends(
    make_host: Any, backend: str, receiver: Any
) -> None:
    """Behind a retrying delivery, the others are set aside (no claim reads them meanwhile);
    each one that ends makes the next due at once."""
    config = {**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [1.5, 1.5]}
    host = make_host(backend, **config)
    server = receiver(failing_twice(0))
    register(host, server.url("/fifo"), ordering="fifo")
    with host.app.app_context():
        ids = [host.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(10)]

    def due_times() -> dict[str, Any]:
        with host.app.app_context(), get_state().database.independent_session() as session:
            rows = session.execute(select(Delivery.id, Delivery.next_attempt_at, Delivery.attempts))
            return {row.id: row for row in rows}

    wait_until(lambda: due_times()[ids[0]].attempts == 1)
    time.sleep(0.2)
    rows = due_times()
    head_due = rows[ids[0]].next_attempt_at
    assert head_due is not None
    assert all(rows[i].next_attempt_at is None for i in ids[1:])  # set aside: due at no time
    started = time.monotonic()
    wait_until(lambda: statuses(host).count("succeeded") == 10, timeout=40)
    # Two retries 1.5 s apart, then nine more one after the other: far from the lease (64 s).
    assert time.monotonic() - started < 20
    check_in_order_from(server, "/fifo", flaky=0, count=10)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_delivery_sent_again_waits_for_the_one_being_sent_and_keeps_its_place(
    make_host: Any, backend: str, receiver: Any
) -> None:
    gate = threading.Event()

    def respond(request: Any, _count: int) -> Reply:
        return Reply(wait=gate) if number_of(request.body) == 1 else Reply()

    host = make_host(backend, **DELIVERY_CONFIG)
    server = receiver(respond)
    rid = register(host, server.url("/fifo"), ordering="fifo")
    with host.app.app_context():
        ids = [host.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(3)]
    wait_until(lambda: len(server.received) == 2)  # 0 done, 1 hanging
    client = host.app.test_client()
    again = client.post(f"{PREFIX}/deliveries/{ids[0]}/redeliver", headers=ADMIN)
    assert again.status_code == 202, again.get_json()
    time.sleep(0.5)
    assert len(server.received) == 2  # not beside the one being sent
    gate.set()
    wait_until(lambda: statuses(host).count("succeeded") == 3)
    numbers = [number_of(r.body) for r in server.received]
    assert numbers == [0, 1, 0, 2]  # the oldest first, one at a time
    assert server.peak_by_path["/fifo"] == 1
    assert rid


def test_a_registration_made_unordered_lets_go_of_what_waited(
    make_host: Any, receiver: Any
) -> None:
    config = {**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [60.0]}
    host = make_host("sqlite", **config)
    server = receiver(lambda request, n: Reply(status=503 if number_of(request.body) == 0 else 200))
    rid = register(host, server.url("/fifo"), ordering="fifo")
    with host.app.app_context():
        for n in range(5):
            host.webhooks.trigger("profile_updated", {"n": n})
    wait_until(lambda: len(server.received) == 1)
    time.sleep(0.3)  # the others are set aside behind the one waiting a minute for its retry
    assert len(server.received) == 1
    changed = host.app.test_cli_runner().invoke(
        args=["webhooks", "options", rid, "--ordering", "none"]
    )
    assert changed.exit_code == 0, changed.output
    wait_until(lambda: statuses(host).count("succeeded") == 4, timeout=10)


# The queue's side, statement by statement: what a race would interleave, done in turn.


def add_pending(host: Host, registration_id: str, count: int) -> list[str]:
    """``count`` pending deliveries of the registration, due now, made in order."""
    from datetime import timedelta

    with host.app.app_context():
        state = get_state()
        now = state.clock.now()
        ids = [f"0000000{n}-0000-7000-8000-000000000000" for n in range(count)]
        with state.database.writing() as session:
            for n, delivery_id in enumerate(ids):
                session.add(
                    Delivery(
                        id=delivery_id,
                        registration_id=registration_id,
                        owner="org-1",
                        topic="profile_updated",
                        mode="async",
                        payload="{}",
                        status="pending",
                        attempts=0,
                        retry_index=0,
                        next_attempt_at=now - timedelta(seconds=1),
                        created_at=now + timedelta(milliseconds=n),
                        updated_at=now,
                    )
                )
    return ids


def rows_of(host: Host) -> dict[str, tuple[str, Any, str | None]]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.status, Delivery.next_attempt_at, Delivery.claim_token)
        )
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_claims_set_aside_only_what_still_waits_and_sweeps_bring_it_back(
    make_host: Any, backend: str
) -> None:
    from sqlalchemy import update

    from flask_kaizen_webhooks.storage import claims, fifo
    from flask_kaizen_webhooks.storage.tables import Registration

    host = make_host(backend, **{**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_EXECUTOR": "none"})
    rid = register(host, "http://127.0.0.1:9/fifo", ordering="fifo")
    first, second, third = add_pending(host, rid, 3)
    with host.app.app_context():
        state = get_state()
        now = state.clock.now()
        with state.database.writing() as session:
            lease = now.replace(year=now.year + 1)
            taken = claims.claim_due(session, now=now, lease_until=lease, token="t", limit=10)
        assert [item.delivery_id for item in taken] == [first]
        rows = rows_of(host)
        assert [rows[i][1] for i in (second, third)] == [None, None]  # set aside
        shown = host.app.test_cli_runner().invoke(args=["webhooks", "stats"]).output
        assert "waiting their turn (FIFO registrations): 2" in shown
        from tests.test_portal_forms import open_portal

        page = open_portal(host).get(f"{PREFIX}/portal/deliveries/{second}")
        assert "after the earlier deliveries (in order)" in page.get_data(as_text=True)
        # A claim read `second` as waiting; before it sets it aside, `first` ended (another
        # process) and another claimer took `third`: neither is set aside then.
        with state.database.writing() as session:
            session.execute(update(Delivery).where(Delivery.id == first).values(status="succeeded"))
            session.execute(
                update(Delivery).where(Delivery.id.in_([second, third])).values(next_attempt_at=now)
            )
            session.execute(
                update(Delivery)
                .where(Delivery.id == third)
                .values(claim_token="other", next_attempt_at=now.replace(year=now.year + 1))
            )
        with state.database.writing() as session:
            session.connection().execute(
                claims._SET_ASIDE, {"b_ids": [second, third], "b_now": now}
            )
        rows = rows_of(host)
        assert rows[second][1] is not None  # its turn had come
        assert rows[third][2] == "other"  # another's claim is left alone
        # Made unordered behind a claim's back: the sweep lets go of what it set aside.
        with state.database.writing() as session:
            session.execute(
                update(Delivery).where(Delivery.id == second).values(next_attempt_at=None)
            )
            session.execute(
                update(Registration).where(Registration.id == rid).values(ordering="none")
            )
            fifo.sweep(session.connection(), now=now)
        assert rows_of(host)[second][1] is not None
