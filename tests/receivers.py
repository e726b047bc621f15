"""Real webhook receivers on 127.0.0.1 for the delivery tests: they record every request and
answer as a test tells them (status, headers, body, delay, or hanging)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    client_port: int


@dataclass
class Reply:
    """How to answer: ``wait`` (an Event) blocks until set, to hang like a dead server."""

    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0
    wait: threading.Event | None = None
    barrier: threading.Barrier | None = None


Responder = Callable[[Received, int], Reply]


class Receiver:
    """A threaded HTTP server on an ephemeral loopback port.

    It also counts the requests it is answering at once, by path and in all: a request counts
    from when its body has been read until just before its answer is written, a span within
    the one its sender has it in flight, so the peaks never overstate the sender's."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or (lambda request, number: Reply())
        self.received: list[Received] = []
        self.answering: Counter[str] = Counter()
        #: The most requests answered at once, by path; and in all.
        self.peak_by_path: Counter[str] = Counter()
        self.peak = 0
        self._changed = threading.Condition()
        self.release = threading.Event()  # set at close, so hanging handlers end
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender died mid-request: nothing was delivered
                request = Received(
                    "POST",
                    self.path,
                    dict(self.headers.items()),
                    body,
                    time.time(),
                    self.client_address[1],
                )
                with owner._changed:
                    owner.received.append(request)
                    number = len(owner.received)
                    owner.answering[self.path] += 1
                    owner.peak_by_path[self.path] = max(
                        owner.peak_by_path[self.path], owner.answering[self.path]
                    )
                    owner.peak = max(owner.peak, owner.answering.total())
                    owner._changed.notify_all()
                try:
                    reply = owner.responder(request, number)
                    if reply.barrier is not None:
                        reply.barrier.wait(timeout=10)
                    if reply.wait is not None:
                        reply.wait.wait(timeout=30)
                    if reply.delay:
                        time.sleep(reply.delay)
                finally:
                    with owner._changed:
                        owner.answering[self.path] -= 1
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up on us

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """The first ``count`` requests; fails the test if they do not come within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"expected {count} requests, got {len(self.received)}"
                self._changed.wait(remaining)
            return list(self.received)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


class RawServer:
    """A TCP server on 127.0.0.1 that handles each connection with ``behave(connection)``."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self._accepted: list[socket.socket] = []
        self._lock = threading.Lock()

        def serve() -> None:
            while True:
                try:
                    connection, _ = self.listener.accept()
                except OSError:
                    return
                with self._lock:
                    if self.stop.is_set():
                        connection.close()
                        return
                    self.connections += 1
                    self._accepted.append(connection)
                threading.Thread(target=behave, args=(connection,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        """Stop accepting, and end every connection, so that no handler outlives the test."""
        with self._lock:
            self.stop.set()
            accepted = list(self._accepted)
        for sock in [self.listener, *accepted]:
            with contextlib.suppress(OSError):  # closed already, or never connected
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
        self.listener.close()


def drip(connection: socket.socket) -> None:
    connection.recv(65536)
    try:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello":
            connection.sendall(bytes([byte]))
            time.sleep(1.0)  # one byte a second
    except OSError:
        pass
    connection.close()
