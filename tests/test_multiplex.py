"""The dispatcher's sender: one thread, many POSTs at once, against real servers on 127.0.0.1.

How each answer is read is tested through both drivers (``both_drivers`` in test_http1,
test_transport and test_tls); here, what only the loop does: its cap on attempts at once, large
requests written in parts, stopping with work in hand, and a result handler that fails."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask_kaizen_webhooks.multiplex import Job, Multiplexer
from flask_kaizen_webhooks.transport import SendResult, Transport

from flask_kaizen_webhooks.guard import AddressPolicy
from tests.receivers import Received, Reply, wait_until

LOOPBACK = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


class Results:
    """Collects what the multiplexer hands back, by context."""

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


@pytest.fixture
def sender() -> Iterator[Any]:
    made: list[Multiplexer[Any]] = []

    def start(results: Results, max_active: int = 4, **transport: Any) -> Multiplexer[Any]:
        options: dict[str, Any] = {"max_response_bytes": 1024, "pool_size": 8, "policy": LOOPBACK}
        made.append(
            Multiplexer(
                Transport(**{**options, **transport}),
                max_active=max_active,
                connect_timeout=1.0,
                done=results.done,
            )
        )
        made[-1].start()
        return made[-1]

    yield start
    for multiplexer in made:
        multiplexer.stop(1.0)


def job(url: str, n: Any, body: bytes = b"{}", timeout: float = 5.0) -> Job[Any]:
    return Job(url, body, {"Content-Type": "application/jose"}, timeout, n)


def test_up_to_max_active_attempts_are_under_way_at_once_and_never_more(
    sender: Any, receiver: Any
) -> None:
    lock = threading.Lock()
    under_way = [0, 0]  # now, most

    def slow(request: Received, n: int) -> Reply:
        with lock:
            under_way[0] += 1
            under_way[1] = max(under_way)
        time.sleep(0.3)
        with lock:
            under_way[0] -= 1
        return Reply()

    server = receiver(slow)
    results = Results()
    multiplexer = sender(results, max_active=4)
    for n in range(12):
        multiplexer.send(job(server.url(), n))
    assert all(result.ok for result in results.wait_for(12).values())
    # One thread held four exchanges at once, in three waves, and never a fifth.
    assert under_way[1] == 4
    assert len({request.client_port for request in server.received}) == 4  # kept alive


def test_a_large_request_is_written_in_parts_as_the_receiver_reads(
    sender: Any, receiver: Any
) -> None:
    server = receiver()
    results = Results()
    body = bytes(range(256)) * 32_768  # 8 MiB: far more than a socket's send buffer
    sender(results).send(job(server.url(), "big", body=body))
    assert results.wait_for(1)["big"].ok
    assert server.received[0].body == body


def test_each_attempt_has_its_whole_time_limit_from_its_start_not_from_its_queueing(
    sender: Any, receiver: Any
) -> None:
    server = receiver(lambda request, n: Reply(delay=1.0))
    results = Results()
    multiplexer = sender(results, max_active=1)
    for n in range(3):  # the third waits 2 s in line, more than its 1.8 s limit
        multiplexer.send(job(server.url(), n, timeout=1.8))
    outcome = results.wait_for(3)
    assert all(outcome[n].ok for n in range(3)), outcome


def test_stopping_gives_back_what_is_under_way_or_waiting_and_closes_connections(
    sender: Any, receiver: Any
) -> None:
    gate = threading.Event()
    server = receiver(lambda request, n: Reply(wait=gate))
    results = Results()
    multiplexer = sender(results, max_active=2)
    for n in range(5):
        multiplexer.send(job(server.url(), n, timeout=30.0))
    server.wait_for(2)
    started = time.monotonic()
    left = multiplexer.stop(0.3)
    assert time.monotonic() - started < 5.0  # it waited its 0.3 s, not the attempts' 30 s
    assert sorted(left) == [0, 1, 2, 3, 4] and results.by_context == {}
    gate.set()
    assert len(server.received) == 2


def test_a_result_handler_that_raises_does_not_stop_the_loop(sender: Any, receiver: Any) -> None:
    server = receiver()
    results = Results()

    def done(context: Any, result: SendResult) -> None:
        if context == 0:
            raise RuntimeError("a defect in the handler")
        results.done(context, result)

    multiplexer = sender(results)
    multiplexer._done = done
    multiplexer.send(job(server.url(), 0))
    server.wait_for(1)
    multiplexer.send(job(server.url(), 1))
    assert results.wait_for(1)[1].ok


def test_a_receiver_answering_early_and_reading_no_more_does_not_keep_the_loop_busy(
    sender: Any,
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []

    def answer_early() -> None:
        connection, _ = listener.accept()
        held.append(connection)
        head = b""
        while b"\r\n\r\n" not in head:
            head += connection.recv(1024)
        connection.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        # ... and never reads the body, nor closes.

    threading.Thread(target=answer_early, daemon=True).start()
    results = Results()
    turns = [0]
    multiplexer = sender(results)
    real_turn = multiplexer._turn

    def counted_turn() -> None:
        turns[0] += 1
        real_turn()

    multiplexer._turn = counted_turn
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    multiplexer.send(job(url, "big", body=b"x" * (64 << 20), timeout=1.0))
    result = results.wait_for(1)["big"]
    assert result.timed_out, result  # as the blocking transport: cut at the deadline
    # The loop slept until the deadline; it did not wake on every readable event meanwhile.
    assert turns[0] < 100, turns
    listener.close()
    for connection in held:
        connection.close()


def test_a_job_that_cannot_start_in_time_goes_to_late_unsent(sender: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(delay=0.5))
    results = Results()
    late: list[Any] = []
    multiplexer = sender(results, max_active=1)
    multiplexer._late = late.append
    multiplexer.send(job(server.url(), "first"))
    multiplexer.send(Job(server.url(), b"{}", {}, 5.0, "second", start_by=time.monotonic() + 0.2))
    assert results.wait_for(1)["first"].ok
    wait_until(lambda: late == ["second"])
    assert len(server.received) == 1 and "second" not in results.by_context


def test_an_invalid_url_and_a_refused_connection_are_results_like_any_other(
    sender: Any, refusing_port: int
) -> None:
    results = Results()
    multiplexer = sender(results)
    multiplexer.send(job("ftp://127.0.0.1/x", "invalid"))
    multiplexer.send(job(f"http://127.0.0.1:{refusing_port}/x", "refused"))
    outcome = results.wait_for(2)
    assert (outcome["invalid"].error or "").startswith("invalid URL")
    assert (outcome["refused"].error or "").startswith("connection failed")
