"""The address guard: hostile destinations are refused without any connection attempt."""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from flask_kaizen_webhooks.guard import AddressPolicy, forbidden_reason, literal_address
from tests.clients import client
from tests.conftest import ADMIN

# Every socket the library's threads make (libcurl gets each from OPENSOCKETFUNCTION, which
# makes it in Python) and every Python connect(), while ``_watch.on`` is set, seen through
# Python's audit hooks.
_connects: list[Any] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    watched = event in ("socket.__new__", "socket.connect") and _WATCHING[0]
    if watched and threading.current_thread().name.startswith("kaizen-webhooks"):
        _connects.append((event, args[1:]))


_WATCHING = [False]


sys.addaudithook(_audit)


@pytest.fixture
def no_connections() -> Iterator[list[Any]]:
    """Fails the test if the library opens a socket or connects anywhere."""
    _connects.clear()
    _WATCHING[0] = True
    yield _connects
    _WATCHING[0] = False
    assert _connects == [], f"connection attempts: {_connects}"


@pytest.fixture
def loopback_listener() -> Iterator[tuple[int, list[Any]]]:
    """A socket on 127.0.0.1:port that records any connection, to catch a guard that leaks."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.05)
    accepted: list[Any] = []
    yield listener.getsockname()[1], accepted
    try:
        while True:
            accepted.append(listener.accept())
    except OSError:
        pass
    listener.close()
    assert accepted == [], "the guard let a connection through"


HOSTILE = [
    # Loopback in every spelling the resolver accepts.
    "http://127.0.0.1/",
    "http://127.0.0.2:80/x",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://0x7f.0.0.1/",
    "http://017700000001/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://[::1]/",
    # IPv6 forms carrying a forbidden IPv4 address.
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::1]/",
    "http://[2002:c0a8:101::1]/",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
    "http://[::127.0.0.1]/",
    # Cloud metadata.
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://169.254.0.1/",
    # Private, shared and special ranges.
    "http://0.0.0.0/",
    "http://0/",
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://192.0.0.8/",
    "http://192.0.2.1/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://198.18.0.1/",
    "http://198.19.255.1/",
    "http://192.88.99.1/",
    # Multicast, reserved, broadcast.
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    # IPv6 special ranges.
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[ff02::1]/",
    "http://[2001:db8::1]/",
    "http://[fec0::1]/",
    "http://[100::1]/",
    # Public addresses on ports that are not allowed.
    "http://93.184.216.34:22/",
    "http://8.8.8.8:25/",
    "https://1.1.1.1:8443/",
    "http://[2606:4700::1111]:6379/",
]


def test_there_are_at_least_forty_hostile_urls() -> None:
    assert len(HOSTILE) >= 40
    assert len(set(HOSTILE)) == len(HOSTILE)


@pytest.mark.parametrize("url", HOSTILE)
def test_send_refuses_without_connecting(url: str, no_connections: list[Any]) -> None:
    transport = client()
    result = transport.post(url, b"x", {}, timeout=2)
    assert result.status_code is None and not result.ok
    # Refused by the guard, or a name that resolves to nothing here: never connected either way.
    assert result.error is not None
    assert result.error.startswith(("forbidden destination:", "cannot resolve"))
    assert result.elapsed < 1.0


def test_encoded_loopback_never_reaches_a_listener(
    loopback_listener: tuple[int, list[Any]],
) -> None:
    port, _ = loopback_listener
    transport = client()
    for host in (
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "localhost",
        "[::ffff:127.0.0.1]",
    ):
        result = transport.post(f"http://{host}:{port}/", b"x", {}, timeout=2)
        assert result.error is not None and "forbidden" in result.error, (host, result)


@pytest.mark.parametrize("url", [u for u in HOSTILE if "[" not in u or "::ffff" in u])
def test_registration_refuses_literal_and_local_destinations(make_host: Any, url: str) -> None:
    client = make_host("sqlite", KAIZEN_WEBHOOKS_ALLOW_HTTP=True).app.test_client()
    body = {"topic": "profile_updated", "url": url, "secret": "signature_secret_0123"}
    response = client.post("/v2/webhooks/registrations", json=body, headers=ADMIN)
    assert response.status_code == 422, url
    assert response.get_json()["error"]["code"] in ("forbidden_address", "forbidden_port")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x",  # not resolved at registration: DNS may not be live yet
        "https://203.0.114.1/x",  # public
        "https://[2606:4700::1111]/x",
    ],
)
def test_registration_accepts_public_and_unresolved_names(make_host: Any, url: str) -> None:
    client = make_host("sqlite").app.test_client()
    body = {"topic": "profile_updated", "url": url, "secret": "signature_secret_0123"}
    assert client.post("/v2/webhooks/registrations", json=body, headers=ADMIN).status_code == 201


def test_allowed_networks_open_a_range_explicitly(make_host: Any) -> None:
    client = make_host(
        "sqlite", KAIZEN_WEBHOOKS_ALLOW_HTTP=True, KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["10.20.0.0/16"]
    ).app.test_client()
    for url, status in (("http://10.20.1.2:8080/x", 201), ("http://10.21.0.1/x", 422)):
        body = {"topic": "profile_updated", "url": url, "secret": "signature_secret_0123"}
        response = client.post("/v2/webhooks/registrations", json=body, headers=ADMIN)
        assert response.status_code == status, url


@pytest.mark.parametrize(
    "url", ["https://example.com:22/", "http://hooks.example.com:8080/x", "https://h.example:6379/"]
)
def test_registration_refuses_a_host_name_on_a_port_that_is_not_allowed(
    make_host: Any, url: str
) -> None:
    client = make_host("sqlite", KAIZEN_WEBHOOKS_ALLOW_HTTP=True).app.test_client()
    body = {"topic": "profile_updated", "url": url, "secret": "signature_secret_0123"}
    response = client.post("/v2/webhooks/registrations", json=body, headers=ADMIN)
    assert response.status_code == 422, url
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("forbidden_port", "url")


def test_allowed_ports_open_a_port_for_host_names(make_host: Any) -> None:
    client = make_host("sqlite", KAIZEN_WEBHOOKS_ALLOWED_PORTS=[8443]).app.test_client()
    for url, status in (
        ("https://hooks.example.com:8443/x", 201),
        ("https://h.example:8444/", 422),
    ):
        body = {"topic": "profile_updated", "url": url, "secret": "signature_secret_0123"}
        response = client.post("/v2/webhooks/registrations", json=body, headers=ADMIN)
        assert response.status_code == status, url


def test_at_send_time_any_port_is_open_inside_allowed_networks() -> None:
    from flask_kaizen_webhooks.errors import ForbiddenDestination

    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("10.20.0.0/16"),))
    inside = [ipaddress.ip_address("10.20.1.2")]
    assert policy.checked_addresses("hooks.corp", 8080, lambda host, port: inside) == inside
    for addresses in ([], [ipaddress.ip_address("10.20.1.2"), ipaddress.ip_address("8.8.8.8")]):
        with pytest.raises(ForbiddenDestination, match="port 8080"):
            policy.check_port(8080, addresses)


def test_every_resolved_address_is_checked_and_only_checked_ones_are_used(
    receiver: Any,
) -> None:
    server = receiver()
    port = int(server.url().rsplit(":", 1)[1].split("/")[0])
    lookups: list[str] = []

    def rebinding(host: str, _port: int) -> list[Any]:
        # First answer is the allowed test address; any later lookup would say 10.0.0.1.
        lookups.append(host)
        return [ipaddress.ip_address("127.0.0.1" if len(lookups) == 1 else "10.0.0.1")]

    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    transport = client(policy=policy, resolver=rebinding)
    result = transport.post(f"http://hooks.rebind.test:{port}/x", b"x", {}, timeout=5)
    assert result.ok, result
    assert lookups == ["hooks.rebind.test"]  # one lookup: the connection used its answer
    assert server.received[0].headers["Host"] == f"hooks.rebind.test:{port}"
    # An answer mixing an allowed address with a forbidden one is refused as a whole.
    mixed = client(
        max_response_bytes=1024,
        policy=policy,
        resolver=lambda host, port: [
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("10.0.0.1"),
        ],
    )
    refused = mixed.post(f"http://mixed.test:{port}/", b"x", {}, timeout=5)
    assert refused.error is not None and "10.0.0.1" in refused.error
    assert len(server.received) == 1


def test_proxy_settings_in_the_environment_are_ignored(
    receiver: Any, monkeypatch: pytest.MonkeyPatch, loopback_listener: tuple[int, list[Any]]
) -> None:
    proxy_port, _ = loopback_listener
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy_port}")
    server = receiver()
    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    transport = client(policy=policy)
    assert transport.post(server.url(), b"x", {}, timeout=5).ok
    assert len(server.received) == 1


def test_forbidden_reason_and_literals() -> None:
    assert forbidden_reason(ipaddress.ip_address("8.8.8.8")) is None
    assert forbidden_reason(ipaddress.ip_address("2606:4700::1111")) is None
    assert forbidden_reason(ipaddress.ip_address("2002:0808:0808::1")) is None  # 6to4 of public
    assert "loopback" in (forbidden_reason(ipaddress.ip_address("64:ff9b::7f00:1")) or "")
    assert literal_address("0x7f000001") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("[::1]") == ipaddress.ip_address("::1")
    assert literal_address("hooks.example.com") is None


def test_the_connection_watch_sees_real_connections(receiver: Any) -> None:
    """The check behind ``no_connections`` can fail: a real send is seen."""
    server = receiver()
    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    _connects.clear()
    _WATCHING[0] = True
    try:
        client(policy=policy).post(server.url(), b"x", {}, timeout=5)
    finally:
        _WATCHING[0] = False
    assert [event for event, _args in _connects] == ["socket.__new__"]  # one socket, for the send
    _connects.clear()


def test_a_host_with_a_zone_or_percent_encoding_is_refused_at_registration(
    make_host: Any,
) -> None:
    client = make_host("sqlite").app.test_client()
    for url in (
        "https://203.0.114.1%25eth0/x",
        "https://ex%61mple.com/x",
        "https://[fe80::1%25lo]/x",
    ):
        body = {"topic": "profile_updated", "url": url, "secret": "signature_secret_0123"}
        response = client.post("/v2/webhooks/registrations", json=body, headers=ADMIN)
        assert response.status_code == 422, url
        assert response.get_json()["error"]["code"] == "invalid_url", url


# What a refusal says -----------------------------------------------------------------------------

NETWORKS_HINT = "An operator can allow its network with KAIZEN_WEBHOOKS_ALLOWED_NETWORKS."


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://127.0.0.1/",
            f"Webhooks cannot go to 127.0.0.1: it is a loopback address. {NETWORKS_HINT}",
        ),
        (
            "http://10.1.2.3/",
            f"Webhooks cannot go to 10.1.2.3: it is a private network address. {NETWORKS_HINT}",
        ),
        (
            "http://[fd12:3456::1]/",
            "Webhooks cannot go to fd12:3456::1: it is a unique local (includes fd00:ec2::254, "
            f"cloud metadata) address. {NETWORKS_HINT}",
        ),
        (
            "http://[::]/",
            f"Webhooks cannot go to ::: it is an unspecified address. {NETWORKS_HINT}",
        ),
        (
            "http://localhost/",
            "Webhooks cannot go to 'localhost': the name stands for this machine or a private "
            "network. An operator can allow such names by opening 127.0.0.1 with "
            "KAIZEN_WEBHOOKS_ALLOWED_NETWORKS.",
        ),
        (
            "https://example.com:22/",
            "Webhooks cannot go to this URL: port 22 is not allowed; the allowed ports are 80, "
            "443. An operator can allow more with KAIZEN_WEBHOOKS_ALLOWED_PORTS.",
        ),
    ],
)
def test_a_refused_registration_says_why_and_which_setting_opens_it(
    make_host: Any, url: str, message: str
) -> None:
    client = make_host("sqlite", KAIZEN_WEBHOOKS_ALLOW_HTTP=True).app.test_client()
    body = {"topic": "profile_updated", "url": url, "secret": "signature_secret_0123"}
    response = client.post("/v2/webhooks/registrations", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert response.get_json()["error"]["message"] == message


def test_refused_plain_http_names_the_setting_that_allows_it(make_host: Any) -> None:
    client = make_host("sqlite").app.test_client()
    body = {
        "topic": "profile_updated",
        "url": "http://h.example/",
        "secret": "signature_secret_0123",
    }
    response = client.post("/v2/webhooks/registrations", json=body, headers=ADMIN)
    assert response.get_json()["error"]["message"] == (
        "Plain http URLs are not allowed here: use https://. An operator can allow http with "
        "KAIZEN_WEBHOOKS_ALLOW_HTTP."
    )


def test_a_refusal_at_send_time_says_why_and_which_setting_opens_it() -> None:
    def private(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("10.0.0.1")]

    transport = client(resolver=private)
    for url, error in (
        ("http://127.0.0.1/", f"127.0.0.1 is a loopback address. {NETWORKS_HINT}"),
        (
            "http://hooks.test/",
            f"'hooks.test' resolves to 10.0.0.1, a private network address. {NETWORKS_HINT}",
        ),
        (
            "http://8.8.8.8:25/",
            "port 25 is not allowed; the allowed ports are 80, 443. An operator can allow more "
            "with KAIZEN_WEBHOOKS_ALLOWED_PORTS.",
        ),
    ):
        result = transport.post(url, b"{}", {}, timeout=2)
        assert result.error == f"forbidden destination: {error}", url


def test_the_delivery_log_records_the_refusal_and_what_opens_it(
    make_host: Any, refusing_port: int
) -> None:
    """A URL stored while its network was allowed is refused when sent after it no longer is."""
    from flask_kaizen_webhooks import get_state
    from flask_kaizen_webhooks.storage import registrations

    host = make_host("sqlite", KAIZEN_WEBHOOKS_ALLOW_HTTP=True, KAIZEN_WEBHOOKS_DISPATCHER="none")
    with host.app.app_context():
        state = get_state()
        registrations.create_registration(
            state.database.session,
            owner="org-1",
            topic="profile_updated",
            url=f"http://127.0.0.1:{refusing_port}/hook",
            sealed_secret=state.secrets.seal("signature_secret_0123"),
        )
        state.database.session.commit()
    client = host.app.test_client()
    [result] = client.post(
        "/v2/webhooks/test", json={"topic": "profile_updated"}, headers=ADMIN
    ).get_json()["deliveries"]
    expected = f"forbidden destination: 127.0.0.1 is a loopback address. {NETWORKS_HINT}"
    assert result["error"] == expected
    logged = client.get(f"/v2/webhooks/deliveries/{result['delivery_id']}", headers=ADMIN)
    assert logged.get_json()["last_error"] == expected


def test_a_socket_is_never_opened_to_a_forbidden_address_even_past_the_lookup_check(
    loopback_listener: tuple[int, list[Any]], no_connections: list[Any]
) -> None:
    """The second line: were the check of a lookup's answer ever skipped, libcurl's
    OPENSOCKETFUNCTION still judges the address it is about to open a socket to."""
    port, _accepted = loopback_listener
    sender = client()  # the strict policy
    sender.pins.pinned = lambda *where: ipaddress.ip_address("127.0.0.1")  # type: ignore[method-assign]
    result = sender.post(f"http://hooks.example.com:{port}/", b"x", {}, timeout=2)
    assert result.error == "forbidden destination: 127.0.0.1 is a loopback address", result
