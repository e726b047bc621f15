"""The one HTTP client every webhook goes out through: libcurl's multi interface (pycurl), on a
thread of its own that carries many POSTs at once.

libcurl speaks the HTTP: keep-alive connections, TLS with the certificate checked against the
URL's name (``Host`` and SNI keep it too), one deadline per attempt, a connect timeout, an answer
refused past ``max_response_bytes``. On top of it, what a webhook sender needs:

* The address guard. A URL's host is looked up here, on a thread of its own (the answer kept
  for :data:`PIN_SECONDS`); every address it has is judged by the
  :class:`~flask_kaizen_webhooks.guard.AddressPolicy` and libcurl is pinned (``RESOLVE``) to the
  first, so a connection goes to a checked address, never to a second lookup's answer. Every
  socket libcurl is about to open is judged again (``OPENSOCKETFUNCTION``): a forbidden address
  never gets a socket at all.
* Only ``http`` and ``https``, no redirects, no proxy from the environment (an operator's egress
  proxy if one is set), no ``Expect: 100-continue``, answers never decompressed.
* Every outcome a :class:`SendResult`; nothing a receiver does raises.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..guard import AddressPolicy, Resolver, resolve
from .destinations import AddressBook
from .lookups import Pins
from .loop import GRACE, Loop, call_done
from .transfer import ClientOptions, Job, SendResult, failure, route

__all__ = ["Client", "Job", "SendResult", "route"]

logger = logging.getLogger("flask_kaizen_webhooks")


class Client:
    """Sends POSTs, up to ``max_active`` at once (the rest wait their turn, in order), on one
    thread that starts on first use; safe to use from any thread."""

    def __init__(
        self,
        *,
        max_response_bytes: int,
        max_active: int,
        connect_timeout: float,
        policy: AddressPolicy | None = None,
        resolver: Resolver = resolve,
        ca_bundle: str | None = None,
        proxy: str | None = None,
        name: str = "kaizen-webhooks-client",
        count_attempts: Callable[[int], None] | None = None,
    ) -> None:
        self.options = ClientOptions(
            max_response_bytes=max_response_bytes,
            max_active=max_active,
            connect_timeout=connect_timeout,
            policy=policy or AddressPolicy(),
            ca_bundle=ca_bundle,
            proxy=proxy,
            name=name,
            count_attempts=count_attempts,
        )
        self.resolver = resolver
        self._loop: Loop | None = None
        self.after_fork()

    def after_fork(self) -> None:
        """Start afresh (in a forked child: the parent's thread, connections and lookups are not
        this process's; its libcurl handles are kept, never cleaned up here, so that nothing is
        written to the parent's connections)."""
        if self._loop is not None:
            _ABANDONED.append(self._loop)
        self._lock = threading.Lock()
        self._loop = None
        self._pid = os.getpid()
        #: Hosts' checked addresses, and the address each name was last connected to.
        self.pins = Pins(self.options.policy, self.resolver)

    @property
    def max_active(self) -> int:
        """How many POSTs this client makes at once, at most."""
        return self.options.max_active

    @property
    def proxy(self) -> str | None:
        """The egress proxy every POST goes through, if any."""
        return self.options.proxy

    @property
    def addresses(self) -> AddressBook:
        """The address each host name was last connected to (what per-host caps count)."""
        return self.pins.addresses

    @property
    def load(self) -> int:
        """Jobs sent here and not finished (a hint, read without a lock)."""
        loop = self._loop
        return 0 if loop is None else loop.load

    def send(self, *jobs: Job[Any]) -> Loop | None:
        """Make the POSTs of ``jobs`` (from any thread); each result goes to its ``done``. The
        loop that took them comes back (None if none could start: their ``done`` has had a
        failed result)."""
        error: Exception | None = None
        with self._lock:
            if self._pid != os.getpid():
                self.after_fork()
            if self._loop is None or not self._loop.take(jobs):
                try:
                    self._loop = Loop(self.options, self.pins)
                    self._loop.take(jobs)
                except Exception as exc:  # no thread, socket or handle to be had now
                    logger.exception("Webhook client: could not start")
                    self._loop, error = None, exc
            loop = self._loop
        if error is not None:  # outside the lock: a ``done`` may send again
            for job in jobs:
                call_done(job, failure(time.monotonic(), f"internal error: {error!r}"))
        return loop

    def post(self, url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> SendResult:
        """POST ``body`` to ``url`` and wait for the result: ``timeout`` seconds from when the
        attempt starts (it may wait for a free slot first)."""
        return self._wait([Job(url, body, headers, timeout, 0, _noop, give_back=False)], None)[0]

    def post_all(
        self, requests: Sequence[tuple[str, bytes, dict[str, str]]], *, timeout: float
    ) -> list[SendResult]:
        """POST every ``(url, body, headers)`` of ``requests`` at once, and return their results
        in order when all are in, or at the deadline ``timeout`` seconds from now (those still
        under way then time out)."""
        deadline = time.monotonic() + timeout
        jobs = [
            Job(
                url,
                body,
                headers,
                timeout,
                0,
                _noop,
                give_back=False,
                start_by=deadline,
                end_by=deadline,
            )
            for url, body, headers in requests
        ]
        return self._wait(jobs, deadline)

    def _wait(self, jobs: list[Job[Any]], deadline: float | None) -> list[SendResult]:
        """Send ``jobs`` and wait for their results (until ``deadline``, if there is one)."""
        if not jobs:  # nothing to wait for (every hook's request failed before it was made)
            return []
        started = time.monotonic()
        results: list[SendResult | None] = [None] * len(jobs)
        lock, all_in, left = threading.Lock(), threading.Event(), [len(jobs)]

        def done(index: int, result: SendResult) -> None:
            with lock:
                if results[index] is None:
                    results[index] = result
                    left[0] -= 1
                    if not left[0]:
                        all_in.set()

        for index, job in enumerate(jobs):
            job.context, job.done = index, done
        loop = self.send(*jobs) if jobs else None
        if deadline is not None:
            all_in.wait(max(0.0, deadline - time.monotonic()) + GRACE)
        else:
            while not all_in.wait(1.0):
                if loop is None or loop.ended:  # a stop hands the results over just after
                    all_in.wait(GRACE)
                    break
        waited = time.monotonic() - started
        late = failure(started, f"timed out: no answer within {waited:.3g} s", timed_out=True)
        with lock:
            return [result or late for result in results]

    def stop(self, timeout: float) -> list[Job[Any]]:
        """Start nothing new, let the attempts under way finish for up to ``timeout`` seconds,
        then close every connection. The jobs not finished that are to be given back come back
        (their ``done`` is not called); the others' ``done`` gets a failed result. The client
        starts again on its next use."""
        with self._lock:
            loop, self._loop = self._loop, None
        left = [] if loop is None else loop.stop(timeout)
        stopped = failure(time.monotonic(), "cancelled: the client stopped")
        for job in left:
            if not job.give_back:
                call_done(job, stopped)
        return [job for job in left if job.give_back]

    def close(self) -> None:
        """Close every connection (the client starts again on its next use)."""
        self.stop(0.0)


#: libcurl handles of a parent process, in a forked child: kept, never cleaned up there.
_ABANDONED: list[Any] = []


def _noop(_context: Any, _result: SendResult) -> None:
    """A placeholder ``done``."""
