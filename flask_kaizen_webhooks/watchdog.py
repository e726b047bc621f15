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
    """One attempt's deadline and the connection it uses."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.armed = True
        self.fired = False
        self.connection: HTTPConnection | None = None

    def fire(self) -> None:
        """Cut the attempt off: shut its socket down so any blocked read returns at once."""
        if not self.armed:
            return
        self.fired = True
        sock = getattr(self.connection, "sock", None)
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
        deadline.armed = False
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


def _register(connection: HTTPConnection) -> None:
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None and deadline.armed:
        deadline.connection = connection


class WatchedHTTPConnection(HTTPConnection):
    """An HTTP connection that binds itself to the current attempt's deadline."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class WatchedHTTPSConnection(HTTPSConnection):
    """An HTTPS connection that binds itself to the current attempt's deadline."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class WatchedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


POOL_CLASSES = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}
