"""One integrator cannot take the capacity others wait on: the host's logins have threads and
connections of their own, owners take turns within a fan-out, name lookups never queue behind
another integrator's slow names, and tests and redeliveries are limited per owner."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

import pytest

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.guard import AddressPolicy
from tests.clients import client
from tests.conftest import ADMIN, DELIVERY_CONFIG, OTHER_ADMIN, FrozenClock, register
from tests.receivers import Reply, wait_until

#: Few threads, so that a handful of hanging receivers would fill them.
SMALL = {
    **DELIVERY_CONFIG,
    "KAIZEN_WEBHOOKS_SYNC_WORKERS": 4,
    "KAIZEN_WEBHOOKS_SYNC_TIMEOUT": 5,
    "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 20,
}


def hanging_receiver(receiver: Any) -> Any:
    server = receiver()
    server.responder = lambda request, n: Reply(wait=server.release)
    return server


def test_tests_of_hanging_endpoints_leave_the_logins_their_capacity(
    make_host: Any, receiver: Any
) -> None:
    host = make_host("sqlite", **SMALL)
    hanging = hanging_receiver(receiver)
    for n in range(4):
        register(host, hanging.url(f"/{n}"), topic="profile_updated", headers=OTHER_ADMIN)
    healthy = receiver()
    register(host, healthy.url(), topic="user_logged_in")
    client = host.app.test_client()

    def test_everything() -> None:
        client.post("/v2/webhooks/test", json={"topic": "profile_updated"}, headers=OTHER_ADMIN)

    testers = [threading.Thread(target=test_everything, daemon=True) for _ in range(2)]
    for tester in testers:
        tester.start()
    hanging.wait_for(4)  # as many hanging tests as the host has sync threads
    with host.app.app_context():
        [login] = host.webhooks.trigger("user_logged_in", {"user_id": "u-1"})
    assert login.ok, login
    hanging.release.set()
    for tester in testers:
        tester.join(30)


def test_one_integrators_many_login_hooks_do_not_queue_ahead_of_another(
    make_host: Any, receiver: Any
) -> None:
    host = make_host("sqlite", **SMALL)
    hanging = hanging_receiver(receiver)
    for n in range(6):  # registered first, and more of them than the host has sync threads
        register(host, hanging.url(f"/{n}"), topic="user_logged_in", headers=OTHER_ADMIN)
    healthy = receiver()
    mine = register(host, healthy.url(), topic="user_logged_in")
    with host.app.app_context():
        results = host.webhooks.trigger("user_logged_in", {"user_id": "u-1"})
    hanging.release.set()
    by_registration = {result.registration_id: result for result in results}
    assert by_registration[mine["id"]].ok, by_registration[mine["id"]]
    assert sum(result.timed_out for result in results) == 6


def test_one_integrators_slow_names_do_not_hold_up_anothers_lookups(receiver: Any) -> None:
    server = receiver()
    port = server.server.server_port
    stuck = threading.Event()

    def resolver(host: str, port: int) -> list[Any]:
        if host.startswith("slow-"):
            stuck.wait(30)  # a name server that never answers
        return [ipaddress.ip_address("127.0.0.1")]

    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    transport = client(policy=policy, resolver=resolver, max_active=32)  # as the sync client

    def post(name: str, timeout: float) -> Any:
        return transport.post(f"http://{name}:{port}/", b"x", {}, timeout=timeout)

    slow = [
        threading.Thread(target=post, args=(f"slow-{n}.example", 3.0), daemon=True)
        for n in range(20)
    ]
    for thread in slow:
        thread.start()
    wait_until(lambda: len(transport.pins.lookups.under_way) == 20)  # every slow lookup hangs
    try:
        result = post("fast.example", 2.0)
        assert result.ok, result
    finally:
        stuck.set()
        for thread in slow:
            thread.join(10)
        transport.close()


def test_a_test_goes_to_a_bounded_number_of_endpoints(make_host: Any, receiver: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_TEST_MAX_TARGETS=2)
    server = receiver()
    ids = [register(host, server.url(f"/{n}"))["id"] for n in range(3)]
    client = host.app.test_client()
    response = client.post("/v2/webhooks/test", json={"topic": "profile_updated"}, headers=ADMIN)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert (error["code"], error["field"], error["limit"]) == (
        "too_many_targets",
        "registration_id",
        2,
    )
    assert not server.received
    one = {"topic": "profile_updated", "registration_id": ids[0]}
    assert client.post("/v2/webhooks/test", json=one, headers=ADMIN).status_code == 200


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_tests_and_redeliveries_are_limited_per_owner_across_processes(
    make_host: Any, receiver: Any, backend: str
) -> None:
    limits = {
        "KAIZEN_WEBHOOKS_TEST_CALLS_PER_MINUTE": 3,
        "KAIZEN_WEBHOOKS_REDELIVER_CALLS_PER_MINUTE": 2,
    }
    first = make_host(backend, **DELIVERY_CONFIG, **limits)
    # A second app on the same database, as another web process would be.
    url = first.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    second = make_host(
        backend, **DELIVERY_CONFIG, **limits, KAIZEN_WEBHOOKS_DATABASE_URI=url, keep_tables=True
    )
    clock = FrozenClock(1_800_000_000.0 + 5)  # five seconds into a minute
    for host in (first, second):
        get_state(host.app).clock = clock
    server = receiver()
    register(first, server.url())
    register(first, server.url(), headers=OTHER_ADMIN)
    test = {"topic": "profile_updated"}

    def call(host: Any, headers: dict[str, str] = ADMIN) -> Any:
        return host.app.test_client().post("/v2/webhooks/test", json=test, headers=headers)

    assert [call(host).status_code for host in (first, second, first)] == [200, 200, 200]
    refused = call(second)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "55"
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert call(first, OTHER_ADMIN).status_code == 200  # another owner has a count of their own
    assert len(server.received) == 4
    redeliveries = [
        host.app.test_client().post("/v2/webhooks/deliveries/none/redeliver", headers=ADMIN)
        for host in (first, second, first)
    ]
    assert [response.status_code for response in redeliveries] == [404, 404, 429]
    clock.advance(60)  # the next minute
    assert call(second).status_code == 200
