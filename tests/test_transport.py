"""The HTTP client against real misbehaving servers on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

import pytest

from flask_kaizen_webhooks.guard import AddressPolicy
from tests.clients import client, wrap
from tests.receivers import Reply

pytestmark = pytest.mark.both_drivers

LOOPBACK = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


def transport(max_response_bytes: int = 1024) -> Transport:
    return wrap(client(max_response_bytes=max_response_bytes, policy=LOOPBACK))


def post(client: Transport, url: str, timeout: float = 2.0) -> Any:
    return client.post(url, b"x", {"Content-Type": "application/jose"}, timeout=timeout)


def test_a_huge_answer_is_read_only_up_to_the_cap(receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(body=b"a" * 5_000_000))
    result = post(transport(1024), server.url())
    assert result.ok and result.status_code == 200
    assert result.body == b"a" * 1024


def test_a_dribbling_answer_is_cut_at_the_time_limit(receiver: Any) -> None:
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def dribble() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                connection.sendall(b"x")
            except OSError:
                break
            time.sleep(0.05)
        connection.close()

    threading.Thread(target=dribble, daemon=True).start()
    started = time.monotonic()
    result = post(transport(), f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=1.0)
    took = time.monotonic() - started
    stop.set()
    listener.close()
    assert not result.ok and result.timed_out
    assert result.error == "timed out reading the response"
    assert took < 1.0 + 2.0  # cut at the limit, not after the 100,000 bytes (~80 s)


def test_connection_refused_and_keep_alive_reuse(receiver: Any, refusing_port: int) -> None:
    client = transport()
    refused = post(client, f"http://127.0.0.1:{refusing_port}/")
    assert refused.status_code is None and not refused.timed_out
    assert refused.error is not None and refused.error.startswith("connection failed")
    server = receiver()
    for _ in range(5):
        assert post(client, server.url()).ok
    # One keep-alive connection carried all five.
    assert len(server.received) == 5
    assert len({request.client_port for request in server.received}) == 1


def post_to_a_dripping_server(scheme: str, reply: bytes) -> tuple[Any, float]:
    """POST (1 s limit) to a server on 127.0.0.1 that reads the request, then sends ``reply``
    one byte every 50 ms (well inside the socket timeout, far beyond the limit in total);
    the result and the seconds it took."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def drip() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        for byte in reply:
            if stop.is_set():
                break
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
        connection.close()

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/"
    result = post(transport(), url, timeout=1.0)
    took = time.monotonic() - started
    stop.set()
    listener.close()
    return result, took


def test_a_receiver_dripping_its_headers_is_cut_at_the_time_limit() -> None:
    result, took = post_to_a_dripping_server("http", b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000)
    assert result.timed_out and not result.ok, result
    assert took < 1.0 + 2.0  # not the ~50 s the drip would take


def test_a_slow_name_lookup_is_cut_at_the_time_limit(receiver: Any) -> None:
    server = receiver()
    port = int(server.url().rsplit(":", 1)[1].split("/", 1)[0])

    def slow_resolver(host: str, port: int) -> list[Any]:
        time.sleep(5)
        return [ipaddress.ip_address("127.0.0.1")]

    client = wrap(client(policy=LOOPBACK, resolver=slow_resolver))
    started = time.monotonic()
    result = post(client, f"http://hooks.example.test:{port}/", timeout=0.5)
    took = time.monotonic() - started
    client.close()
    assert result.timed_out and not result.ok, result
    assert result.error is not None and "resolving 'hooks.example.test'" in result.error
    assert took < 0.5 + 2.0  # not the 5 s the lookup takes
    assert not server.received


def test_a_tls_handshake_dripped_byte_by_byte_is_cut_at_the_time_limit() -> None:
    # A handshake record of 16 KiB holding one ServerHello of 16 KiB - 4 bytes.
    reply = b"\x16\x03\x03\x40\x00" + b"\x02\x00\x3f\xfc" + b"\x00" * 16380
    result, took = post_to_a_dripping_server("https", reply)
    assert result.timed_out and not result.ok, result
    assert took < 1.0 + 2.0  # not the ~15 minutes the drip would take
