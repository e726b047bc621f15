"""Misbehaving receivers on 127.0.0.1, all at once: the host is never held up, and every
delivery ends in the right state with the right number of attempts."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.delivery.destinations import AddressBook, destination_of
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import DELIVERY_CONFIG, register
from tests.receivers import RawServer, Reply, drip, wait_until


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(behave: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(behave))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def never_answer(connection: socket.socket) -> None:
    while connection.recv(65536):  # reads until the client gives up (or the server closes)
        pass
    connection.close()


def reset(connection: socket.socket) -> None:
    connection.recv(65536)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    connection.close()  # RST instead of an answer


def test_every_kind_of_broken_receiver(
    make_host: Any, receiver: Any, raw_server: Any, refusing_port: int
) -> None:
    config = {
        **DELIVERY_CONFIG,
        "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 3,
        "KAIZEN_WEBHOOKS_CONNECT_TIMEOUT": 2,
        "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [0.1],
        "KAIZEN_WEBHOOKS_WORKERS": 8,
        "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST": 16,
    }
    host = make_host("sqlite", **config)
    gate = threading.Event()
    # (receiver url, expected status, expected attempts, expected error fragment)
    cases = {
        "gated": (receiver(lambda r, n: Reply(wait=gate)).url(), "succeeded", 1, None),
        "500": (receiver(lambda r, n: Reply(status=500)).url(), "failed", 2, "HTTP 500"),
        "302": (
            receiver(lambda r, n: Reply(status=302, headers={"Location": "/x"})).url(),
            "failed",
            2,
            "redirects are not followed",
        ),
        "410": (receiver(lambda r, n: Reply(status=410)).url(), "failed", 1, "HTTP 410"),
        "429": (
            receiver(
                lambda r, n: Reply(status=429, headers={"Retry-After": "0"}) if n == 1 else Reply()
            ).url(),
            "succeeded",
            2,
            None,
        ),
        "big": (receiver(lambda r, n: Reply(body=b"x" * 60_000)).url(), "succeeded", 1, None),
        "huge": (
            receiver(lambda r, n: Reply(body=b"x" * 3_000_000)).url(),
            "failed",
            2,
            "answer too large: over 65,536 bytes",
        ),
        "silent": (raw_server(never_answer).url(), "failed", 2, "timed out"),
        "drip": (raw_server(drip).url(), "failed", 2, "timed out"),
        "reset": (raw_server(reset).url(), "failed", 2, "Connection"),
        "down": (f"http://127.0.0.1:{refusing_port}/hook", "failed", 2, "connection failed"),
    }
    registration_of = {name: register(host, url)["id"] for name, (url, *_rest) in cases.items()}
    with host.app.app_context():
        ids = host.webhooks.trigger("profile_updated", {"n": 1})
    assert len(ids) == len(cases)

    def rows() -> dict[str, Delivery]:
        with host.app.app_context(), get_state().database.independent_session() as session:
            return {row.registration_id: row for row in session.scalars(select(Delivery))}

    # The host's call only wrote outbox rows: it returned while a receiver that cannot answer
    # before the gate opens had not answered.
    assert rows()[registration_of["gated"]].status == "pending"
    gate.set()

    wait_until(lambda: all(row.status != "pending" for row in rows().values()), timeout=30)
    final = rows()
    for name, (_url, status, attempts, error) in cases.items():
        row = final[registration_of[name]]
        assert (row.status, row.attempts) == (status, attempts), (name, row.last_error)
        if error is None:
            assert row.last_error is None, name
        else:
            assert error in (row.last_error or ""), (name, row.last_error)
    assert len(final[registration_of["big"]].response_excerpt or "") == 2048


def test_a_healthy_endpoint_gets_its_share_of_a_host_that_hangs(
    make_host: Any, receiver: Any, raw_server: Any
) -> None:
    """Seven misbehaving endpoints and one healthy one on one host (127.0.0.1), the default
    caps: the healthy one is not starved of the host's slots."""
    config = {
        **DELIVERY_CONFIG,
        "KAIZEN_WEBHOOKS_WORKERS": 8,
        "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 30,
        "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [1, 1, 1],
    }
    host = make_host("sqlite", **config)
    assert get_state(host.app).settings.max_in_flight_per_host == 4
    hanging = receiver()
    hanging.responder = lambda request, n: Reply(wait=hanging.release)
    healthy = receiver()
    misbehaving = [
        hanging.url(),
        raw_server(drip).url(),
        raw_server(reset).url(),
        receiver(lambda r, n: Reply(body=b"x" * 50_000_000)).url(),
        receiver(lambda r, n: Reply(status=500)).url(),
        receiver(lambda r, n: Reply(status=302, headers={"Location": "/x"})).url(),
        receiver(lambda r, n: Reply(status=410)).url(),
    ]
    for url in [*misbehaving, healthy.url()]:  # the healthy one last: last in every event
        register(host, url)
    with host.app.app_context():
        for n in range(40):
            host.webhooks.trigger("profile_updated", {"n": n})
    started = time.monotonic()
    healthy.wait_for(40, timeout=60)
    took = time.monotonic() - started
    # Half an attempt's time limit: it never waited behind a hanging attempt.
    assert took < 15, f"the healthy endpoint needed {took:.1f} s for its 40 deliveries"


SPELLINGS_OF_LOOPBACK = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "127.0.1",
    "0x7f.1",
    "0177.0.0.1",
]


def test_the_per_host_cap_counts_the_address_not_its_spellings(
    make_host: Any, receiver: Any
) -> None:
    config = {
        **DELIVERY_CONFIG,
        "KAIZEN_WEBHOOKS_WORKERS": 8,
        "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST": 2,
        "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 20,
    }
    host = make_host("sqlite", **config)
    hanging = receiver()
    hanging.responder = lambda request, n: Reply(wait=hanging.release)
    port = hanging.server.server_port
    for spelling in SPELLINGS_OF_LOOPBACK:
        register(host, f"http://{spelling}:{port}/hook")
    with host.app.app_context():
        assert len(host.webhooks.trigger("profile_updated", {"n": 1})) == 8
    in_flight = get_state(host.app).executor._in_flight  # type: ignore[attr-defined]
    hanging.wait_for(2)
    wait_until(lambda: in_flight.parked == 6)  # the other six wait for the one server's slots
    assert len(hanging.received) == 2
    assert dict(in_flight._hosts) == {"127.0.0.1": 2}


def test_a_name_counts_by_the_address_it_was_last_connected_to() -> None:
    book = AddressBook(ttl=60)
    assert destination_of("https://hooks.example.com/a", book) == "hooks.example.com"
    book.note("hooks.example.com", ipaddress.ip_address("93.184.216.34"))
    book.note("other-name.example.net", ipaddress.ip_address("::ffff:93.184.216.34"))
    assert destination_of("https://HOOKS.example.com:8443/b", book) == "93.184.216.34"
    assert destination_of("https://other-name.example.net/", book) == "93.184.216.34"
    assert destination_of("http://[::ffff:93.184.216.34]/", book) == "93.184.216.34"
    assert destination_of("http://1572395042/", book) == "93.184.216.34"
    expired = AddressBook(ttl=-1)
    expired.note("hooks.example.com", ipaddress.ip_address("93.184.216.34"))
    assert destination_of("https://hooks.example.com/a", expired) == "hooks.example.com"
