"""How the client reads receivers' answers, framed every way HTTP/1.x allows (and some ways it
does not), from real servers on 127.0.0.1 that send exactly the bytes a test gives. libcurl reads
them; these tests pin down what each kind of answer becomes."""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from flask_kaizen_webhooks.delivery.client import Client, SendResult, route
from flask_kaizen_webhooks.delivery.outcomes import outcome_of
from tests.clients import LOOPBACK
from tests.clients import client as new_client
from tests.receivers import RawServer, wait_until


def read_request(connection: socket.socket) -> bytes:
    """One whole request (head and Content-Length body) off ``connection``; b"" at its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


class Scripted(RawServer):
    """Answers the n-th request on a connection with ``replies[n]``, then closes the
    connection (``close``) or keeps it open until the client closes it; records every
    request."""

    def __init__(self, *replies: bytes, close: bool = False) -> None:
        self.requests: list[bytes] = []
        self.closed = 0  # connections this side has closed

        def behave(connection: socket.socket) -> None:
            try:
                with connection:
                    for reply in replies:
                        request = read_request(connection)
                        if not request:
                            return
                        self.requests.append(request)
                        connection.sendall(reply)
                    if not close:
                        with contextlib.suppress(OSError):
                            connection.recv(1)  # until the client closes
            finally:
                self.closed += 1

        super().__init__(behave)


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(*replies: bytes, close: bool = False) -> Scripted:
        servers.append(Scripted(*replies, close=close))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def post(client: Client, url: str) -> SendResult:
    return client.post(url, b"{}", {"Webhook-Id": "d1"}, timeout=3)


def client(max_response_bytes: int = 1024) -> Client:
    return new_client(max_response_bytes=max_response_bytes, policy=LOOPBACK)


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)


@pytest.mark.parametrize(
    ("reply", "status", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello"),
        (CHUNKED, 200, b"hello world"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            201,
            b"ok",
        ),
        (b"HTTP/1.1 202\r\nContent-Length: 0\r\n\r\n", 202, b""),  # no reason phrase
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 200, b"ok"),  # bare LF line ends
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
    ],
)
def test_answers_framed_every_way_are_read_and_the_connection_reused(
    scripted: Any, reply: bytes, status: int, body: bytes
) -> None:
    server = scripted(reply, reply)
    sender = client()
    for _ in range(2):
        result = post(sender, server.url())
        assert (result.status_code, result.body, result.error) == (status, body, None)
    assert server.connections == 1  # both over one keep-alive connection
    head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /hook HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in head
    assert b"Content-Length: 2" in head and b"Webhook-Id: d1" in head
    # Nothing a receiver could be tricked by: no 100-continue, no compressed answers asked for.
    assert not any(line.lower().startswith((b"expect", b"accept")) for line in head)
    assert server.requests[0].endswith(b"\r\n\r\n{}")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nok",  # framed by the end of the connection
    ],
)
def test_a_connection_that_cannot_carry_another_request_is_not_reused(
    scripted: Any, reply: bytes
) -> None:
    server = scripted(reply, close=True)
    sender = client()
    for _ in range(2):
        result = post(sender, server.url())
        assert (result.status_code, result.body, result.error) == (200, b"ok", None)
    assert server.connections == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "HTTP/0.9"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "Header without colon"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            "Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "Content-Length"),
    ],
)
def test_a_malformed_head_is_a_failed_attempt(scripted: Any, reply: bytes, error: str) -> None:
    result = post(client(), scripted(reply).url())
    assert not result.ok and not result.timed_out
    assert result.error is not None and result.error.startswith("malformed answer:"), result
    assert error in result.error
    assert outcome_of(result) == "connection_error"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 6000 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 400_000 + b"\r\n\r\n",
    ],
)
def test_a_head_beyond_libcurl_s_limits_is_an_answer_too_large(scripted: Any, reply: bytes) -> None:
    result = post(client(), scripted(reply).url())
    assert not result.ok and not result.timed_out
    assert result.error is not None and result.error.startswith("answer too large:"), result
    assert outcome_of(result) == "too_large"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "hex"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n",
            "chunked",
        ),
    ],
)
def test_a_malformed_body_keeps_the_status_and_fails(
    scripted: Any, reply: bytes, error: str
) -> None:
    result = post(client(), scripted(reply).url())
    assert result.status_code == 200 and not result.ok
    assert result.error is not None and result.error.startswith("reading the response failed")
    assert error in result.error


def test_a_body_cut_short_by_the_receiver_fails_with_what_was_read(scripted: Any) -> None:
    half = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", close=True)
    result = post(client(), half.url())
    assert result.status_code == 200 and not result.ok and result.body == b"half"
    assert result.error is not None and "6 bytes missing" in result.error


def test_a_receiver_closing_without_an_answer_is_a_failed_attempt(scripted: Any) -> None:
    result = post(client(), scripted(b"", close=True).url())
    assert result.status_code is None and not result.ok
    assert result.error == "the receiver closed the connection without answering"


def test_endless_interim_answers_are_cut_at_the_deadline() -> None:
    def interim_forever(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            read_request(connection)
            while True:
                connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                time.sleep(0.01)

    server = RawServer(interim_forever)
    try:
        started = time.monotonic()
        result = client().post(server.url(), b"{}", {}, timeout=1.0)
        assert result.timed_out and not result.ok, result
        assert time.monotonic() - started < 3.0
    finally:
        server.close()


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_an_answer_over_the_cap_is_a_clear_failure_and_its_connection_dropped(
    scripted: Any, framing: str
) -> None:
    body = b"b" * 5000
    head = {
        "length": b"Content-Length: 5000\r\n",
        "chunked": b"Transfer-Encoding: chunked\r\n",
        "close": b"",
    }[framing]
    payload = b"1388\r\n" + body + b"\r\n0\r\n\r\n" if framing == "chunked" else body
    server = scripted(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + payload, close=framing == "close")
    sender = client(max_response_bytes=100)
    for _ in range(2):
        result = post(sender, server.url())
        assert result.status_code == 200 and not result.ok and not result.timed_out
        assert result.error == "answer too large: over 100 bytes", result
    assert server.connections == 2  # the first connection was not read to its end: dropped


def test_a_content_length_beyond_any_number_is_an_answer_too_large(scripted: Any) -> None:
    server = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\nok")
    result = post(client(), server.url())
    assert result.error == "answer too large: over 1,024 bytes", result


def test_an_answer_exactly_at_the_cap_is_read_whole(scripted: Any) -> None:
    server = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"b" * 100)
    result = post(client(max_response_bytes=100), server.url())
    assert (result.status_code, result.body, result.error) == (200, b"b" * 100, None)


def test_an_idle_connection_the_receiver_closed_is_not_used_again(scripted: Any) -> None:
    # A keep-alive answer, then the receiver closes (its idle timeout, say).
    server = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True)
    sender = client()
    assert post(sender, server.url()).ok
    wait_until(lambda: server.closed == 1)
    time.sleep(0.1)  # the closing reaches the client
    assert post(sender, server.url()).ok
    assert server.connections == 2


def test_a_compressed_answer_is_kept_as_it_came(scripted: Any) -> None:
    packed = gzip.compress(b'{"ok": true}')
    server = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
        + str(len(packed)).encode()
        + b"\r\n\r\n"
        + packed
    )
    result = post(client(), server.url())
    assert (result.status_code, result.body, result.error) == (200, packed, None)


def test_request_targets_are_sent_safely(scripted: Any) -> None:
    assert route("http://h.test/a b?q=é").url == "http://h.test/a%20b?q=%C3%A9"
    assert route("https://h.test").url == "https://h.test/"
    assert route("https://[2001:db8::1]:8443/x").url == "https://[2001:db8::1]:8443/x"
    assert route("https://h.test:443/x").url == "https://h.test/x"
    assert route("http://0x7f000001:8080/x").url == "http://127.0.0.1:8080/x"
    with pytest.raises(ValueError):
        route("ftp://h.test/x")
    with pytest.raises(ValueError, match="port 0"):
        route("http://h.test:0/x")  # never pinned to a port the guard did not judge
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    server = scripted(ok, ok)
    sender = client()
    for path in ("/a/../b", "/a b?q=é"):
        assert sender.post(f"http://127.0.0.1:{server.port}{path}", b"", {}, timeout=3).ok
    targets = [request.split(b" ")[1] for request in server.requests]
    assert targets == [b"/a/../b", b"/a%20b?q=%C3%A9"]  # as written, never normalized


def test_a_header_value_with_a_line_break_is_refused_before_connecting(scripted: Any) -> None:
    server = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    result = client().post(server.url(), b"{}", {"X-Evil": "a\r\nX-Injected: 1"}, timeout=3)
    assert not result.ok and result.error is not None and "line break" in result.error
    assert server.connections == 0


def test_a_body_over_the_cap_that_arrives_later_does_not_spoil_the_next_request() -> None:
    def slow_tail(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):  # the client may have gone already
            while read_request(connection):
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"b" * 100)
                time.sleep(0.2)  # the client has its 100 bytes and nothing else buffered
                connection.sendall(b"b" * 4900)

    server = RawServer(slow_tail)
    try:
        sender = client(max_response_bytes=100)
        for _ in range(2):
            result = post(sender, server.url())
            assert (result.status_code, result.error) == (200, "answer too large: over 100 bytes")
    finally:
        server.close()
    assert server.connections == 2


def test_a_body_in_thousands_of_small_chunks_is_read_like_any_other(scripted: Any) -> None:
    chunks = b"".join(b"2\r\nab\r\n" for _ in range(14_000))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = scripted(head + chunks + b"0\r\n\r\n")
    result = post(client(max_response_bytes=64 * 1024), server.url())
    assert (result.status_code, result.error, result.body) == (200, None, b"ab" * 14_000)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"120", 120.0),
        (b"Mon, 01 Jan 99999999999999999999 00:00:00 GMT", None),  # out of any range
        (b"soon", None),
        ("\u00b2".encode(), None),  # a digit to str.isdigit(), not to HTTP
        (b"Mon, 01 Jan 2001 00:00:00 GMT", None),  # past: no wait asked for
        (b"0", None),  # no wait asked for: the schedule decides
    ],
)
def test_retry_after_is_read_in_seconds(scripted: Any, value: bytes, seconds: float | None) -> None:
    server = scripted(
        b"HTTP/1.1 503 Busy\r\nRetry-After: " + value + b"\r\nContent-Length: 0\r\n\r\n"
    )
    result = post(client(), server.url())
    assert (result.status_code, result.retry_after, result.error) == (503, seconds, None)


def test_retry_after_as_a_date_is_the_seconds_until_it(scripted: Any) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 600))
    server = scripted(
        b"HTTP/1.1 429 Slow down\r\nRetry-After: "
        + when.encode()
        + b"\r\nContent-Length: 0\r\n\r\n"
    )
    result = post(client(), server.url())
    assert result.status_code == 429 and result.retry_after is not None
    assert 590 <= result.retry_after <= 601


def test_a_host_with_a_zone_is_an_invalid_url_not_an_exception(scripted: Any) -> None:
    server = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    url = f"https://127.0.0.1%25{'a' * 64}:{server.port}/hook"
    result = post(client(), url)
    assert result.error is not None and result.error.startswith("invalid URL"), result
    assert server.connections == 0


def named_client(delay: float = 0.0) -> Client:
    """A client whose resolver says every name is 127.0.0.1 (after ``delay`` seconds)."""

    def resolver(host: str, port: int) -> list[Any]:
        time.sleep(delay)
        return [ipaddress.ip_address("127.0.0.1")]

    return new_client(policy=LOOPBACK, resolver=resolver)


def test_names_are_looked_up_and_sent_after_close_and_in_a_forked_child(scripted: Any) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server = scripted(*[ok] * 20)
    url = f"http://hooks.example.test:{server.port}/hook"
    sender = named_client(delay=0.05)
    with ThreadPoolExecutor(8) as pool:
        assert all(r.ok for r in pool.map(lambda _: post(sender, url), range(8)))
    sender.close()
    assert post(sender, url).ok  # the client starts again after close()
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the parent's thread and connections do not exist here
        try:
            results = [post(sender, url) for _ in range(3)]
            os.write(writer, b"".join(b"1" if r.ok else b"0" for r in results))
        finally:
            os._exit(0)
    os.close(writer)
    deadline = time.monotonic() + 30
    while (waited := os.waitpid(child, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail("the forked child did not finish in 30 s")
        time.sleep(0.05)
    assert os.read(reader, 16) == b"111" and waited[1] == 0
    os.close(reader)
    assert post(sender, url).ok  # and the parent's connections still work
