"""A deadline for a whole HTTP attempt.

Socket timeouts bound each read, not the attempt: a receiver that drips one byte a second
through its status line and headers would never trip them. The watchdog thread shuts the
attempt's socket down when its deadline passes, whatever the attempt is waiting for.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

_current = threading.local()


class Deadline:
    """One attempt's deadline and the socket it uses."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.armed = True
        self.fired = False
        self._sock: socket.socket | None = None
        self._own: socket.socket | None = None  # a duplicate of a new connection's socket
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        """Bind the attempt's socket (a pooled one, on each request); cut it at once if the
        deadline passed."""
        with self._lock:
            if not self.armed:
                return
            self._sock = sock
            if self.fired:
                _shut(sock)

    def watch_new(self, sock: socket.socket) -> None:
        """Bind a socket just connected. TLS takes its descriptor over (the object is left
        detached), so a duplicate is kept: shutting it down ends the handshake as well."""
        with self._lock:
            if not self.armed:
                return
            if self._own is not None:
                self._own.close()
            self._own = sock.dup()
            self._sock = self._own
            if self.fired:
                _shut(self._own)

    def fire(self) -> None:
        """Cut the attempt off: shut its socket down so any blocked read returns at once."""
        with self._lock:
            if not self.armed:
                return
            self.fired = True
            _shut(self._sock)

    def disarm(self) -> None:
        """The attempt is over: the deadline will not touch its socket any more."""
        with self._lock:
            self.armed = False
            self._sock = None
            if self._own is not None:
                self._own.close()
                self._own = None


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """Fires deadlines from one background thread (started on first use)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, at: float) -> Deadline:
        """A deadline at ``at`` (``time.monotonic()`` clock), bound to this thread's next
        request: the connection that sends it registers itself."""
        deadline = Deadline(at)
        _current.deadline = deadline
        with self._condition:
            heapq.heappush(self._heap, (at, next(self._counter), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="kaizen-webhooks-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is deadline:
                self._condition.notify()
        return deadline

    @staticmethod
    def disarm(deadline: Deadline) -> None:
        """The attempt is over; the deadline will not fire."""
        deadline.disarm()
        if getattr(_current, "deadline", None) is deadline:
            _current.deadline = None

    def _run(self) -> None:
        import time

        while True:
            with self._condition:
                while not self._heap:
                    self._condition.wait()
                at, _, deadline = self._heap[0]
                now = time.monotonic()
                if not deadline.armed:
                    heapq.heappop(self._heap)
                    continue
                if now < at:
                    self._condition.wait(at - now)
                    continue
                heapq.heappop(self._heap)
            deadline.fire()


def _watch(sock: socket.socket | None) -> None:
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


def _watch_new(sock: socket.socket) -> None:
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch_new(sock)


class WatchedHTTPConnection(HTTPConnection):
    """An HTTP connection whose socket the current attempt's deadline can cut: from its
    creation (so connecting is covered too) and again on each request (a pooled one)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch_new(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)
        super().request(*args, **kwargs)


class WatchedHTTPSConnection(HTTPSConnection):
    """An HTTPS connection whose socket the current attempt's deadline can cut: the raw
    socket from its creation (covering the TLS handshake), the TLS one on each request."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch_new(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)
        super().request(*args, **kwargs)


class WatchedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


POOL_CLASSES = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}
