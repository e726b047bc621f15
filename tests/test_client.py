"""The HTTP client on its own, against real servers on 127.0.0.1: many POSTs at once on one
thread, each with its whole deadline from its start, whatever the receiver does; stopping with
work in hand; an egress proxy."""

from __future__ import annotations

import contextlib
import ipaddress
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flask_kaizen_webhooks.delivery.client import Client, Job, SendResult
from flask_kaizen_webhooks.guard import AddressPolicy
from tests.clients import LOOPBACK, client
from tests.receivers import RawServer, Received, Reply, wait_until


class Results:
    """Collects what the client hands back, by context."""

    def __init__(self) -> None:
        self.by_context: dict[Any, SendResult] = {}
        self.changed = threading.Condition()

    def done(self, context: Any, result: SendResult) -> None:
        with self.changed:
            self.by_context[context] = result
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 15.0) -> dict[Any, SendResult]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.by_context) >= count, timeout), (
                f"{len(self.by_context)} of {count} results"
            )
            return dict(self.by_context)


def job(url: str, n: Any, results: Results, body: bytes = b"{}", timeout: float = 5.0) -> Job[Any]:
    return Job(url, body, {"Content-Type": "application/jose"}, timeout, n, results.done)


def post(sender: Client, url: str, timeout: float = 2.0) -> SendResult:
    return sender.post(url, b"x", {"Content-Type": "application/jose"}, timeout=timeout)


@contextlib.contextmanager
def listening() -> Iterator[tuple[socket.socket, str]]:
    """A bare listening socket on 127.0.0.1 and its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        yield listener, f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        listener.close()


def test_up_to_max_active_attempts_are_under_way_at_once_and_never_more(receiver: Any) -> None:
    lock = threading.Lock()
    under_way = [0, 0]  # now, most
    senders: set[str] = set()  # the client's threads seen while attempts were under way
    earlier = set(threading.enumerate())  # an earlier test's threads may still be ending

    def slow(request: Received, n: int) -> Reply:
        with lock:
            under_way[0] += 1
            under_way[1] = max(under_way)
            started = set(threading.enumerate()) - earlier
            senders.update(t.name for t in started if t.name.startswith("kaizen"))
        time.sleep(0.3)
        with lock:
            under_way[0] -= 1
        return Reply()

    server = receiver(slow)
    results = Results()
    sender = client(policy=LOOPBACK, max_active=4)
    sender.send(*(job(server.url(), n, results) for n in range(12)))
    assert all(result.ok for result in results.wait_for(12).values())
    # One thread held four exchanges at once, in three waves, and never a fifth.
    assert under_way[1] == 4
    assert len({request.client_port for request in server.received}) == 4  # kept alive
    assert senders == {"kaizen-webhooks-client"}  # one thread carried them all


def test_post_all_sends_every_request_at_once_under_one_deadline(receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(delay=0.0 if request.path == "/fast" else 5.0))
    sender = client(policy=LOOPBACK, max_active=16)
    started = time.monotonic()
    results = sender.post_all(
        [(server.url("/fast"), b"{}", {})] * 4 + [(server.url("/slow"), b"{}", {})] * 4,
        timeout=0.8,
    )
    took = time.monotonic() - started
    assert [r.ok for r in results] == [True] * 4 + [False] * 4
    assert all(r.timed_out for r in results[4:])
    assert 0.8 <= took < 3.0  # the one deadline, not 4 x 5 s nor 8 x 0.8 s


def test_a_large_request_is_written_in_parts_as_the_receiver_reads(receiver: Any) -> None:
    server = receiver()
    body = bytes(range(256)) * 32_768  # 8 MiB: far more than a socket's send buffer
    result = client(policy=LOOPBACK).post(server.url(), body, {}, timeout=10)
    assert result.ok, result
    assert server.received[0].body == body
    assert "Expect" not in server.received[0].headers


def test_each_attempt_has_its_whole_time_limit_from_its_start_not_from_its_queueing(
    receiver: Any,
) -> None:
    server = receiver(lambda request, n: Reply(delay=1.0))
    results = Results()
    sender = client(policy=LOOPBACK, max_active=1)
    # The third waits 2 s in line: with that wait, its 1 s answer would be past its 2.5 s limit.
    sender.send(*(job(server.url(), n, results, timeout=2.5) for n in range(3)))
    outcome = results.wait_for(3)
    assert all(outcome[n].ok for n in range(3)), outcome


def test_stopping_gives_back_what_is_under_way_or_waiting_and_closes_connections(
    receiver: Any,
) -> None:
    gate = threading.Event()
    server = receiver(lambda request, n: Reply(wait=gate))
    results = Results()
    sender = client(policy=LOOPBACK, max_active=2)
    sender.send(*(job(server.url(), n, results, timeout=30.0) for n in range(5)))
    server.wait_for(2)
    started = time.monotonic()
    left = sender.stop(0.3)
    assert time.monotonic() - started < 5.0  # it waited its 0.3 s, not the attempts' 30 s
    assert sorted(j.context for j in left) == [0, 1, 2, 3, 4] and results.by_context == {}
    gate.set()
    assert len(server.received) == 2
    assert post(sender, server.url()).ok  # and it starts again on its next use


def test_a_result_handler_that_raises_does_not_stop_the_client(receiver: Any) -> None:
    server = receiver()
    results = Results()

    def done(context: Any, result: SendResult) -> None:
        if context == 0:
            raise RuntimeError("a defect in the handler")
        results.done(context, result)

    sender = client(policy=LOOPBACK)
    sender.send(Job(server.url(), b"{}", {}, 5.0, 0, done))
    server.wait_for(1)
    sender.send(Job(server.url(), b"{}", {}, 5.0, 1, done))
    assert results.wait_for(1)[1].ok


def test_a_receiver_answering_early_and_reading_no_more_costs_no_busy_waiting() -> None:
    held: list[socket.socket] = []
    with listening() as (listener, url):

        def answer_early() -> None:
            connection, _ = listener.accept()
            held.append(connection)
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(1024)
            connection.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
            # ... and never reads the body, nor closes.

        threading.Thread(target=answer_early, daemon=True).start()
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = client(policy=LOOPBACK).post(url, b"x" * (64 << 20), {}, timeout=1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
    for connection in held:
        connection.close()
    # Cut at the deadline, or ended by the early answer; either way no spinning meanwhile.
    assert not result.ok, result
    assert (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime) < 0.6


def test_a_job_that_cannot_start_in_time_goes_to_late_unsent(receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(delay=0.5))
    results = Results()
    late: list[Any] = []
    sender = client(policy=LOOPBACK, max_active=1)
    sender.send(job(server.url(), "first", results))
    second = Job(server.url(), b"{}", {}, 5.0, "second", results.done, late=late.append)
    second.start_by = time.monotonic() + 0.2
    sender.send(second)
    assert results.wait_for(1)["first"].ok
    wait_until(lambda: late == ["second"])
    assert len(server.received) == 1 and "second" not in results.by_context


def test_an_invalid_url_and_a_refused_connection_are_results_like_any_other(
    refusing_port: int,
) -> None:
    results = Results()
    sender = client(policy=LOOPBACK)
    sender.send(job("ftp://127.0.0.1/x", "invalid", results))
    sender.send(job(f"http://127.0.0.1:{refusing_port}/x", "refused", results))
    outcome = results.wait_for(2)
    assert (outcome["invalid"].error or "").startswith("invalid URL")
    assert (outcome["refused"].error or "").startswith("connection failed")
    assert not outcome["refused"].timed_out


def test_a_huge_answer_is_refused_past_the_cap(receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(body=b"a" * 5_000_000))
    result = post(client(policy=LOOPBACK, max_response_bytes=1024), server.url())
    assert not result.ok and result.status_code == 200
    assert result.error == "answer too large: over 1,024 bytes"


def test_an_endless_answer_is_refused_past_the_cap() -> None:
    with listening() as (listener, url):

        def endless() -> None:
            connection, _ = listener.accept()
            with connection, contextlib.suppress(OSError):
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                while True:
                    connection.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")

        threading.Thread(target=endless, daemon=True).start()
        result = post(client(policy=LOOPBACK, max_response_bytes=100_000), url, timeout=5.0)
    assert result.error == "answer too large: over 100,000 bytes", result


def drip(reply: bytes, url_scheme: str = "http", timeout: float = 1.0) -> tuple[SendResult, float]:
    """POST (``timeout`` limit) to a server that reads the request, then sends ``reply`` one
    byte every 50 ms (far beyond the limit in total); the result and the seconds it took."""
    stop = threading.Event()
    with listening() as (listener, url):

        def dripping() -> None:
            connection, _ = listener.accept()
            with connection, contextlib.suppress(OSError):
                connection.recv(65536)
                for byte in reply:
                    if stop.is_set():
                        break
                    connection.sendall(bytes([byte]))
                    time.sleep(0.05)

        threading.Thread(target=dripping, daemon=True).start()
        started = time.monotonic()
        result = post(client(policy=LOOPBACK), url.replace("http", url_scheme, 1), timeout)
        took = time.monotonic() - started
        stop.set()
    return result, took


def test_a_dribbling_body_is_cut_at_the_time_limit() -> None:
    result, took = drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    assert not result.ok and result.timed_out and result.status_code == 200
    assert result.error == "timed out reading the response"
    assert took < 1.0 + 3.0  # cut at the limit, not after the drip (~50 s)


def test_a_receiver_dripping_its_headers_is_cut_at_the_time_limit() -> None:
    result, took = drip(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000)
    assert result.timed_out and not result.ok, result
    assert took < 1.0 + 3.0


def test_a_tls_handshake_dripped_byte_by_byte_is_cut_at_the_time_limit() -> None:
    # A handshake record of 16 KiB holding one ServerHello of 16 KiB - 4 bytes.
    result, took = drip(b"\x16\x03\x03\x40\x00" + b"\x02\x00\x3f\xfc" + b"\x00" * 16380, "https")
    assert result.timed_out and not result.ok, result
    assert result.error == "timed out: the TLS handshake did not finish"
    assert took < 1.0 + 3.0  # not the ~15 minutes the drip would take


def test_a_connection_that_is_never_accepted_is_cut_at_the_connect_timeout() -> None:
    # A listener with a full backlog: the SYN goes unanswered, as to a host that drops it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        fillers.append(filler)
    try:
        select.select([], fillers, [], 0.5)
        started = time.monotonic()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        result = client(policy=LOOPBACK, connect_timeout=0.5).post(url, b"x", {}, timeout=5)
        took = time.monotonic() - started
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert result.timed_out and not result.ok, result
    assert result.error is not None and result.error.startswith("timed out: connecting")
    assert took < 0.5 + 2.5  # not the 5 s limit of the whole attempt


def test_a_slow_name_lookup_is_cut_at_the_time_limit(receiver: Any) -> None:
    server = receiver()
    port = server.server.server_port

    def slow_resolver(host: str, port: int) -> list[Any]:
        time.sleep(5)
        return [ipaddress.ip_address("127.0.0.1")]

    sender = client(policy=LOOPBACK, resolver=slow_resolver)
    started = time.monotonic()
    result = post(sender, f"http://hooks.example.test:{port}/", timeout=0.5)
    took = time.monotonic() - started
    assert result.timed_out and not result.ok, result
    assert result.error == "timed out: resolving 'hooks.example.test' did not finish in time"
    assert took < 0.5 + 2.5  # not the 5 s the lookup takes
    assert not server.received


def test_connection_refused_and_keep_alive_reuse(receiver: Any, refusing_port: int) -> None:
    sender = client(policy=LOOPBACK)
    refused = post(sender, f"http://127.0.0.1:{refusing_port}/")
    assert refused.status_code is None and not refused.timed_out
    assert refused.error is not None and refused.error.startswith("connection failed")
    server = receiver()
    for _ in range(5):
        assert post(sender, server.url()).ok
    # One keep-alive connection carried all five.
    assert len(server.received) == 5
    assert len({request.client_port for request in server.received}) == 1


def test_redirects_are_answers_not_followed(receiver: Any) -> None:
    server = receiver(
        lambda request, n: Reply(status=302, headers={"Location": server.url("/elsewhere")})
    )
    result = post(client(policy=LOOPBACK), server.url())
    assert (result.status_code, result.ok, result.error) == (302, False, None)
    assert [request.path for request in server.received] == ["/hook"]


class ConnectProxy:
    """An egress proxy on 127.0.0.1 that tunnels ``CONNECT host:port`` to 127.0.0.1:port and
    records what it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(connection,), daemon=True).start()

    def _tunnel(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(4096)
            target = head.split(b" ")[1].decode()
            self.asked.append(target)
            upstream = socket.create_connection(("127.0.0.1", int(target.rsplit(":", 1)[1])))
            connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with upstream:
                while True:
                    ready, _, _ = select.select([connection, upstream], [], [], 5)
                    if not ready:
                        return
                    for side in ready:
                        data = side.recv(65536)
                        if not data:
                            return
                        (upstream if side is connection else connection).sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_an_egress_proxy_carries_every_webhook_and_looks_names_up_itself(
    receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "*")  # the environment has no say
    monkeypatch.setenv("no_proxy", "*")
    server = receiver()
    port = server.server.server_port
    proxy = ConnectProxy()
    looked_up: list[str] = []

    def resolver(host: str, port: int) -> list[Any]:
        looked_up.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    try:
        strict = AddressPolicy(allowed_ports=frozenset({80, 443, port}))  # no network opened
        sender = client(policy=strict, resolver=resolver, proxy=proxy.url)
        result = post(sender, f"http://hooks.example.test:{port}/x")
    finally:
        proxy.close()
    assert result.ok, result
    assert proxy.asked == [f"hooks.example.test:{port}"]
    assert looked_up == []  # the proxy resolves, and judges, the destination
    assert server.received[0].headers["Host"] == f"hooks.example.test:{port}"


def test_through_a_proxy_what_needs_no_lookup_is_still_judged_here() -> None:
    proxy = ConnectProxy()
    try:
        sender = client(proxy=proxy.url)  # the strict policy
        refused = {
            url: post(sender, url).error
            for url in ("http://10.0.0.1/x", "http://localhost/x", "http://hooks.example:22/x")
        }
    finally:
        proxy.close()
    assert proxy.asked == []
    assert all((error or "").startswith("forbidden destination:") for error in refused.values())
    assert "private network" in (refused["http://10.0.0.1/x"] or "")
    assert "port 22 is not allowed" in (refused["http://hooks.example:22/x"] or "")


def test_a_receiver_stalling_on_a_reused_connection_is_a_timeout_of_the_answer() -> None:
    def first_then_stall(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            connection.recv(65536)  # the second request, never answered
            time.sleep(3)

    server = RawServer(first_then_stall)
    try:
        sender = client(policy=LOOPBACK)
        assert post(sender, server.url()).ok
        result = post(sender, server.url(), timeout=0.5)
    finally:
        server.close()
    assert result.timed_out and result.error == "timed out: no complete answer within 0.5 s"
    assert server.connections == 1


def test_a_header_http_cannot_carry_is_refused_and_the_client_goes_on(receiver: Any) -> None:
    server = receiver()
    sender = client(policy=LOOPBACK, max_active=1)
    refused = sender.post(server.url(), b"{}", {"X-Name": "Zoë 🙂"}, timeout=2)
    assert refused.error is not None and refused.error.startswith("invalid request:"), refused
    assert sender.post(server.url(), b"{}", {"X-Name": "Zoë"}, timeout=2).ok  # latin-1 is fine
    assert server.received[0].headers["X-Name"] == "Zoë"
    assert sender.load == 0


def test_an_answer_with_a_content_type_that_is_not_utf8_is_still_an_answer() -> None:
    def odd_type(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/\xe9\r\nContent-Length: 2\r\n\r\nok"
            )

    server = RawServer(odd_type)
    try:
        result = post(client(policy=LOOPBACK), server.url())
    finally:
        server.close()
    assert (result.ok, result.body, result.content_type) == (True, b"ok", "text/\xe9")


def test_stopping_fails_what_callers_wait_for_at_once_and_hands_back_only_the_rest(
    receiver: Any,
) -> None:
    gate = threading.Event()
    server = receiver(lambda request, n: Reply(wait=gate))
    sender = client(policy=LOOPBACK)
    waited: list[SendResult] = []
    caller = threading.Thread(target=lambda: waited.append(post(sender, server.url(), 30.0)))
    caller.start()
    results = Results()
    sender.send(job(server.url(), "engine", results, timeout=30.0))
    server.wait_for(2)
    started = time.monotonic()
    left = sender.stop(0.2)
    caller.join(5)
    gate.set()
    assert [j.context for j in left] == ["engine"] and results.by_context == {}
    assert waited[0].error == "cancelled: the client stopped"
    assert time.monotonic() - started < 3


def test_a_job_handed_back_at_a_stop_is_never_finished_as_well(receiver: Any) -> None:
    server = receiver()
    results = Results()
    slow = threading.Event()

    def done(context: Any, result: SendResult) -> None:
        if context == 0:
            slow.wait(2)  # holds the client's thread past the stop's wait
        results.done(context, result)

    sender = client(policy=LOOPBACK, max_active=1)
    sender.send(*(Job(server.url(), b"{}", {}, 5.0, n, done) for n in range(4)))
    wait_until(lambda: len(server.received) >= 1)
    left = sender.stop(0.0)
    slow.set()
    time.sleep(0.5)
    handed_back = {j.context for j in left}
    assert handed_back and not handed_back & set(results.by_context)


def test_a_client_that_cannot_start_answers_with_a_failure_not_an_exception() -> None:
    """Out of file descriptors (a real limit, in a child process): no socket for the client's
    wake-up, and the caller gets a failed result."""
    code = (
        "import resource, socket\n"
        "from flask_kaizen_webhooks.delivery.client import Client\n"
        "sender = Client(max_response_bytes=1024, max_active=1, connect_timeout=1)\n"
        "hold = []\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "try:\n"
        "    while True:\n"
        "        hold.append(socket.socket())\n"
        "except OSError:\n"
        "    pass\n"
        "print(sender.post('http://8.8.8.8/', b'x', {}, timeout=1).error)\n"
        "from flask_kaizen_webhooks.delivery.client import Job\n"
        "seen = []\n"
        "def again(context, result):\n"  # a result handler that sends again, as the engine's
        "    seen.append(result.error)\n"
        "    if context == 0:\n"
        "        sender.send(Job('http://8.8.8.8/', b'x', {}, 1, 1, again))\n"
        "sender.send(Job('http://8.8.8.8/', b'x', {}, 1, 0, again))\n"
        "print(len(seen))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("internal error: OSError"), run.stdout
    assert run.stdout.splitlines()[1] == "2"  # and a handler sending again does not hang


def test_a_caller_waiting_through_a_stop_gets_the_answer_that_came_in_time(
    receiver: Any,
) -> None:
    server = receiver(lambda request, n: Reply(delay=1.5))
    sender = client(policy=LOOPBACK)
    waited: list[SendResult] = []
    caller = threading.Thread(target=lambda: waited.append(post(sender, server.url(), 10.0)))
    caller.start()
    server.wait_for(1)
    sender.stop(5.0)  # lets the attempt under way finish
    caller.join(10)
    assert waited and waited[0].ok, waited


def test_load_counts_each_job_once(receiver: Any) -> None:
    server = receiver()
    results = Results()
    busy, counted = threading.Event(), threading.Event()

    def slow_done(context: Any, result: SendResult) -> None:
        busy.set()
        counted.wait(5)  # the client's thread is busy here while more jobs arrive

    sender = client(policy=LOOPBACK)
    sender.send(Job(server.url(), b"{}", {}, 5.0, "first", slow_done))
    assert busy.wait(5)
    sender.send(*(job(server.url(), n, results) for n in range(5)))
    load = sender.load
    counted.set()
    assert load == 5
    results.wait_for(5)
