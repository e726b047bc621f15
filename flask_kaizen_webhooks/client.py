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

import contextlib
import ipaddress
import logging
import os
import queue
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import pycurl

from .destinations import AddressBook
from .guard import (
    AddressPolicy,
    ForbiddenDestination,
    IPAddress,
    Resolver,
    ascii_name,
    literal_address,
    resolve,
)
from .lookups import Pins

logger = logging.getLogger("flask_kaizen_webhooks")

T = TypeVar("T")
#: Idle connections libcurl keeps, at most.
MAX_CONNECTIONS = 256
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Seconds a blocking call waits beyond its attempts' deadline (which libcurl keeps) for their
#: results to come back from the client's thread.
GRACE = 0.25
#: libcurl's CURLE_TOO_LARGE: an answer's head beyond libcurl's limits.
TOO_LARGE = 100
#: What a libcurl error means, for those it may give without a message.
DESCRIPTIONS = {TOO_LARGE: "the answer's head is too large"}


@dataclass(frozen=True, slots=True)
class SendResult:
    """What came of one POST."""

    status_code: int | None
    elapsed: float
    body: bytes
    content_type: str | None
    retry_after: float | None
    error: str | None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """A 2xx answer (redirects and everything else count as failure)."""
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def failure(started: float, error: str, *, timed_out: bool = False) -> SendResult:
    """The result of an attempt that ended with ``error`` and no answer."""
    return SendResult(None, time.monotonic() - started, b"", None, None, error, timed_out)


@dataclass(frozen=True, slots=True)
class Route:
    """What sending to one URL needs, worked out once per URL."""

    host: str
    port: int
    #: The URL as libcurl gets it: the host in its ASCII form, the target %-encoded.
    url: str
    #: The address the host spells, if it is an address literal.
    literal: IPAddress | None


@lru_cache(maxsize=4096)
def route(url: str) -> Route:
    """The :class:`Route` of ``url``; ValueError (saying why) if it is not an absolute http(s)
    URL. An internationalized host is sent (looked up, in ``Host`` and TLS SNI) in its ASCII
    form; spaces, controls and non-ASCII in the path and query are %-encoded."""
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
    if scheme not in DEFAULT_PORTS or not host:
        raise ValueError("not an absolute http(s) URL")
    if "%" in host:
        raise ValueError("the host carries a zone (%) or percent-encoding")
    try:
        host = ascii_name(host)
    except ValueError as exc:
        raise ValueError(f"the host is {exc}") from None
    literal = literal_address(host)
    if literal is not None:  # one spelling of each address: 127.1 and 0x7f000001 are 127.0.0.1
        host = str(literal)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = f"[{host}]" if ":" in host else host
    if port == 0:
        raise ValueError("port 0")
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    safe = "".join(map(chr, range(0x21, 0x7F)))
    url = f"{scheme}://{netloc}{quote(target, safe)}"
    return Route(host, port or DEFAULT_PORTS[scheme], url, literal)


@dataclass(eq=False, slots=True)
class Job(Generic[T]):
    """One POST to make; ``done`` gets ``context`` and the result, on the client's thread."""

    url: str
    body: bytes
    headers: dict[str, str]
    #: Seconds the whole attempt may take once started (jobs beyond ``max_active`` wait).
    timeout: float
    context: T
    done: Callable[[T, SendResult], None]
    #: Gets ``context`` instead of ``done`` when the job could not start by ``start_by``
    #: (``time.monotonic()``); without it, ``done`` gets a timed-out result.
    late: Callable[[T], None] | None = None
    #: True: a job not finished when the client stops is handed back to :meth:`Client.stop`'s
    #: caller; False: its ``done`` gets a failed result then (someone is waiting for it).
    give_back: bool = True
    start_by: float = float("inf")
    #: The ``time.monotonic()`` the attempt ends by, however late it started.
    end_by: float = float("inf")
    #: When it started (``time.monotonic()``), set by the client.
    started: float = 0.0


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
    ) -> None:
        self.max_response_bytes = max_response_bytes
        self.max_active = max_active
        self.connect_timeout = connect_timeout
        self.policy = policy or AddressPolicy()
        self.resolver = resolver
        self.ca_bundle = ca_bundle
        self.proxy = proxy
        self.name = name
        self._loop: _Loop | None = None
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
        self.pins = Pins(self.policy, self.resolver)

    @property
    def addresses(self) -> AddressBook:
        """The address each host name was last connected to (what per-host caps count)."""
        return self.pins.addresses

    @property
    def load(self) -> int:
        """Jobs sent here and not finished (a hint, read without a lock)."""
        loop = self._loop
        return 0 if loop is None else loop.load

    def send(self, *jobs: Job[Any]) -> _Loop | None:
        """Make the POSTs of ``jobs`` (from any thread); each result goes to its ``done``. The
        loop that took them comes back (None if none could start: their ``done`` has had a
        failed result)."""
        error: Exception | None = None
        with self._lock:
            if self._pid != os.getpid():
                self.after_fork()
            if self._loop is None or not self._loop.take(jobs):
                try:
                    self._loop = _Loop(self)
                    self._loop.take(jobs)
                except Exception as exc:  # no thread, socket or handle to be had now
                    logger.exception("Webhook client: could not start")
                    self._loop, error = None, exc
            loop = self._loop
        if error is not None:  # outside the lock: a ``done`` may send again
            for job in jobs:
                _call_done(job, failure(time.monotonic(), f"internal error: {error!r}"))
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
                _call_done(job, stopped)
        return [job for job in left if job.give_back]

    def close(self) -> None:
        """Close every connection (the client starts again on its next use)."""
        self.stop(0.0)


#: libcurl handles of a parent process, in a forked child: kept, never cleaned up there.
_ABANDONED: list[Any] = []


def _noop(_context: Any, _result: SendResult) -> None:
    """A placeholder ``done``."""


def _call_done(job: Job[Any], result: SendResult) -> None:
    try:
        job.done(job.context, result)
    except Exception:
        logger.exception("Webhook client: handling a result failed")


@dataclass(eq=False, slots=True)
class _Transfer:
    """A job under way: its host being looked up, then with libcurl."""

    job: Job[Any]
    route: Route
    ends: float
    #: Why the guard refused the address libcurl was about to open a socket to.
    refused: str | None = None


class _Sink:
    """The answer of the transfer a handle carries, up to the cap (one per handle)."""

    __slots__ = ("cap", "chunks", "size", "too_large", "transfer")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.reset(None)

    def reset(self, transfer: _Transfer | None) -> None:
        self.transfer = transfer
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False

    def write(self, data: bytes) -> int | None:
        self.size += len(data)
        if self.size > self.cap:
            self.too_large = True
            return 0  # fewer bytes than given: libcurl ends the transfer
        self.chunks.append(data)
        return None


class _Loop:
    """One run of a client's thread: a ``CurlMulti`` driven by ``socket_action`` on ``epoll``
    (or ``poll``), and a socket that wakes it when jobs arrive. Everything here but
    :meth:`take`, :meth:`stop` and :attr:`load` runs on that thread."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.taking = True
        self.ended = False
        self._lock = threading.Lock()  # taking, and the set of jobs
        self._inbox: queue.SimpleQueue[Job[Any] | tuple[_Transfer, Any]] = queue.SimpleQueue()
        self._jobs: set[Job[Any]] = set()  # every job taken and not finished
        self._waiting: deque[Job[Any]] = deque()
        self._looking_up: set[_Transfer] = set()
        self._active = 0  # started: looking up or with libcurl
        self._idle: list[tuple[pycurl.Curl, _Sink]] = []
        self._sinks: dict[pycurl.Curl, _Sink] = {}  # each handle in use, and its answer
        self._watched: dict[int, int] = {}  # each socket libcurl watches, and for which events
        self._stop_by: float | None = None
        self._poller = _Poller()
        self._wake_in, self._wake_out = socket.socketpair()
        try:
            for end in (self._wake_in, self._wake_out):
                end.setblocking(False)
            self._poller.register(self._wake_in.fileno(), select.POLLIN)
            self._multi = pycurl.CurlMulti()
            self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
            self._multi.setopt(pycurl.M_MAXCONNECTS, MAX_CONNECTIONS)
            self._thread = threading.Thread(target=self._run, name=client.name, daemon=True)
            self._thread.start()
        except BaseException:
            self._close()
            raise

    @property
    def load(self) -> int:
        return len(self._jobs)

    def take(self, jobs: Sequence[Job[Any]]) -> bool:
        """Take ``jobs`` (from any thread); False once the loop is stopping."""
        with self._lock:
            if not self.taking:
                return False
            self._jobs.update(jobs)
        if threading.current_thread() is self._thread:  # from a ``done``: no need to wake
            self._waiting.extend(jobs)
            return True
        for job in jobs:
            self._inbox.put(job)
        self._signal()
        return True

    def stop(self, timeout: float) -> list[Job[Any]]:
        with self._lock:
            self.taking = False
        self._stop_by = time.monotonic() + timeout
        self._signal()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout + GRACE)
        with self._lock:  # what is handed back is finished here no more
            left, self._jobs = list(self._jobs), set()
        return left

    # The loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not (self._stop_by is not None and (not self._active or self._past_stop())):
                try:
                    self._turn()
                except Exception:  # a defect: the other attempts carry on
                    logger.exception("Webhook client: unexpected error")
        finally:
            self._close()

    def _past_stop(self) -> bool:
        return self._stop_by is not None and time.monotonic() >= self._stop_by

    def _turn(self) -> None:
        wake = self._wake_in.fileno()
        multi = self._multi
        for fd, mask in self._poller.poll(self._wait()):
            if fd == wake:
                self._drain_wake()
                continue
            flags = (pycurl.CSELECT_IN if mask & select.POLLIN else 0) | (
                pycurl.CSELECT_OUT if mask & select.POLLOUT else 0
            )
            if mask & (select.POLLERR | select.POLLHUP):
                flags |= pycurl.CSELECT_ERR
            multi.socket_action(fd, flags)
        self._take_inbox()
        now = time.monotonic()
        for transfer in [t for t in self._looking_up if t.ends <= now]:
            self._looking_up.discard(transfer)
            host = transfer.route.host
            self._end(transfer, f"timed out: resolving {host!r} did not finish in time", True)
        self._start_waiting()
        if multi.timeout() == 0:  # libcurl's own timers (deadlines, new transfers) are due
            multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        self._collect()

    def _wait(self) -> float | None:
        """Seconds until the loop has something to do without being woken."""
        if self._waiting and self._active < self.client.max_active and self.taking:
            return 0.0
        times = [t.ends for t in self._looking_up]
        curl = self._multi.timeout()
        if curl >= 0:
            times.append(time.monotonic() + curl / 1000)
        if self._stop_by is not None:
            times.append(self._stop_by)
        return None if not times else max(0.0, min(times) - time.monotonic())

    def _signal(self) -> None:
        with contextlib.suppress(OSError):  # full, or closed: the loop is awake, or gone
            self._wake_out.send(b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_in.recv(4096):
                pass

    def _on_socket(self, what: int, fd: int, _multi: Any, _data: Any) -> None:
        """libcurl says which events of ``fd`` to wait for (or to forget it)."""
        watched = self._watched
        try:
            if what == pycurl.POLL_REMOVE:
                if watched.pop(fd, None) is not None:
                    self._poller.unregister(fd)
                return
            events = (select.POLLIN if what & pycurl.POLL_IN else 0) | (
                select.POLLOUT if what & pycurl.POLL_OUT else 0
            )
            before = watched.get(fd)
            if before != events:
                try:  # a number libcurl used before may stand for a new socket now
                    self._poller.modify(fd, events) if before else self._poller.register(fd, events)
                except FileNotFoundError:
                    self._poller.register(fd, events)
                except FileExistsError:
                    self._poller.modify(fd, events)
            watched[fd] = events
        except (ValueError, OSError):
            logger.exception("Webhook client: socket %d could not be watched", fd)

    def _take_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Job):
                self._waiting.append(item)
            else:
                self._resolved(*item)

    # Attempts -------------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        while self._waiting and self._active < self.client.max_active and self.taking:
            job = self._waiting.popleft()
            now = time.monotonic()
            if now >= min(job.start_by, job.end_by):
                if self._forget(job):
                    if job.late is None:
                        _call_done(job, failure(now, "timed out before sending", timed_out=True))
                    else:
                        try:
                            job.late(job.context)
                        except Exception:
                            logger.exception("Webhook client: handing back a late job failed")
                continue
            self._active += 1
            job.started = now  # the deadline counts from here
            try:
                self._begin(job, min(now + job.timeout, job.end_by))
            except Exception as exc:  # a defect: this attempt fails, the others carry on
                logger.exception("Webhook to %s: unexpected error", job.url)
                self._finish(job, failure(now, f"internal error: {type(exc).__name__}"))

    def _begin(self, job: Job[Any], ends: float) -> None:
        try:
            where = route(job.url)
        except ValueError as exc:
            self._finish(job, failure(job.started, f"invalid URL: {exc}"))
            return
        transfer = _Transfer(job, where, ends)
        pins = self.client.pins
        try:
            if self.client.proxy is not None:  # the proxy looks the name up, and judges it
                pins.judge_unresolved(where.host, where.port, where.literal)
                self._add(transfer, None)
                return
            address = pins.pinned(where.host, where.port, where.literal)
        except ForbiddenDestination as exc:
            self._refuse(transfer, exc.reason)
            return
        if address is not None:
            self._add(transfer, address)
            return
        future = pins.lookups.look_up(where.host, where.port)
        self._looking_up.add(transfer)
        future.add_done_callback(partial(self._looked_up, transfer))

    def _looked_up(self, transfer: _Transfer, future: Any) -> None:
        """On the lookup's thread (or this one): the answer goes to the loop."""
        self._inbox.put((transfer, future))
        self._signal()

    def _resolved(self, transfer: _Transfer, future: Any) -> None:
        if transfer not in self._looking_up:
            return  # timed out already
        self._looking_up.discard(transfer)
        where = transfer.route
        try:
            address = self.client.pins.pin(where.host, where.port, future.result())
            self._add(transfer, address)
        except ForbiddenDestination as exc:
            self._refuse(transfer, exc.reason)
        except OSError as exc:
            self._refuse(transfer, f"cannot resolve {where.host!r}: {exc}")
        except Exception as exc:
            logger.exception("Webhook to %s: unexpected error", where.host)
            self._end(transfer, f"internal error: {type(exc).__name__}")

    def _refuse(self, transfer: _Transfer, reason: str) -> None:
        logger.warning("Webhook to %s refused before connecting: %s", transfer.route.host, reason)
        self._end(transfer, f"forbidden destination: {reason}")

    def _add(self, transfer: _Transfer, address: IPAddress | None) -> None:
        """Hand ``transfer`` to libcurl, pinned to ``address``."""
        job, where = transfer.job, transfer.route
        remaining = transfer.ends - time.monotonic()
        if remaining <= 0:
            self._end(transfer, "timed out: no time left to connect", True)
            return
        try:
            lines = _header_lines(job.headers)
        except ValueError as exc:
            self._end(transfer, f"invalid request: {exc}")
            return
        handle, sink = self._idle.pop() if self._idle else self._new_handle()
        try:
            handle.setopt(pycurl.URL, where.url)
            handle.setopt(pycurl.HTTPHEADER, lines)
            handle.setopt(pycurl.POSTFIELDS, job.body)
            handle.setopt(pycurl.TIMEOUT_MS, max(1, int(remaining * 1000)))
            connect = min(remaining, self.client.connect_timeout)
            handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(connect * 1000)))
            if address is None or where.literal is not None:
                handle.setopt(pycurl.RESOLVE, [])
            else:  # "+": the entry leaves libcurl's cache like any other, when it is old
                shown = f"[{address}]" if address.version == 6 else str(address)
                handle.setopt(pycurl.RESOLVE, [f"+{where.host}:{where.port}:{shown}"])
            sink.reset(transfer)
            self._sinks[handle] = sink
            self._multi.add_handle(handle)
        except Exception:
            self._sinks.pop(handle, None)
            handle.close()
            raise

    def _new_handle(self) -> tuple[pycurl.Curl, _Sink]:
        client = self.client
        handle, sink = pycurl.Curl(), _Sink(client.max_response_bytes)
        for option, value in (
            (pycurl.NOSIGNAL, 1),
            (pycurl.POST, 1),
            (pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
            (pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
            (pycurl.FOLLOWLOCATION, 0),
            (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
            (pycurl.HTTP_CONTENT_DECODING, 0),
            (pycurl.PATH_AS_IS, 1),
            (pycurl.MAXFILESIZE_LARGE, client.max_response_bytes),
            (pycurl.WRITEFUNCTION, sink.write),
            (pycurl.OPENSOCKETFUNCTION, partial(_open_socket, client, sink)),
        ):
            handle.setopt(option, value)
        if client.proxy is not None:
            handle.setopt(pycurl.PROXY, client.proxy)
            handle.setopt(pycurl.HTTPPROXYTUNNEL, 1)
            handle.setopt(pycurl.NOPROXY, "")  # no exceptions, whatever the environment says
        else:
            handle.setopt(pycurl.NOPROXY, "*")
        if client.ca_bundle is not None:
            handle.setopt(pycurl.CAINFO, client.ca_bundle)
        return handle, sink

    def _collect(self) -> None:
        """Finish every transfer libcurl has done with."""
        while True:
            queued, succeeded, failed = self._multi.info_read()
            for handle in succeeded:
                self._done(handle, 0, "")
            for handle, code, message in failed:
                self._done(handle, code, message)
            if not queued:
                return

    def _done(self, handle: pycurl.Curl, code: int, message: str) -> None:
        sink = self._sinks.pop(handle)
        transfer = sink.transfer
        assert transfer is not None
        try:
            result = _result(transfer, sink, handle, code, message)
        except Exception as exc:
            logger.exception("Webhook to %s: unexpected error", transfer.route.host)
            result = failure(transfer.job.started, f"internal error: {type(exc).__name__}")
        sink.reset(None)
        try:
            self._multi.remove_handle(handle)
            self._idle.append((handle, sink))
        except pycurl.error:
            logger.exception("Webhook client: a handle could not be removed")
        self._finish(transfer.job, result)

    def _end(self, transfer: _Transfer, error: str, timed_out: bool = False) -> None:
        self._finish(transfer.job, failure(transfer.job.started, error, timed_out=timed_out))

    def _forget(self, job: Job[Any]) -> bool:
        """Drop ``job`` from the jobs in hand; False if it was handed back at a stop."""
        with self._lock:
            if job not in self._jobs:
                return False
            self._jobs.discard(job)
            return True

    def _finish(self, job: Job[Any], result: SendResult) -> None:
        self._active -= 1
        if self._forget(job):
            _call_done(job, result)

    def _close(self) -> None:
        self.ended = True
        with self._lock:
            self.taking = False
        for handle, _sink in self._idle:
            handle.close()
        if hasattr(self, "_multi"):
            with contextlib.suppress(pycurl.error):
                self._multi.close()
        self._poller.close()
        self._wake_in.close()
        self._wake_out.close()


class _Poller:
    """``epoll`` where there is one, ``poll`` elsewhere; timeouts in seconds."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = select.poll() if self._epoll is None else None
        what = self._epoll or self._poll
        assert what is not None
        self.register, self.modify, self.unregister = what.register, what.modify, what.unregister

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if self._epoll is not None:
            return self._epoll.poll(-1 if timeout is None else timeout)
        assert self._poll is not None
        return self._poll.poll(None if timeout is None else timeout * 1000)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


def _header_lines(headers: dict[str, str]) -> list[bytes]:
    """The request's header lines (libcurl's own ``Expect`` and ``Accept`` left out);
    ValueError for one that would break the request's framing."""
    lines = [b"Expect:", b"Accept:"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or ":" in name or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} holds a line break or a colon")
        try:
            lines.append(f"{name}: {value}".encode("latin-1"))
        except UnicodeEncodeError:
            raise ValueError(f"header {name!r} holds a character HTTP cannot carry") from None
    return lines


def _open_socket(client: Client, sink: _Sink, _purpose: int, address: Any) -> Any:
    """Called by libcurl for every socket it opens: the address is judged first, and a
    forbidden one gets no socket (the proxy's is the operator's choice)."""
    family, socktype, protocol, sockaddr = address
    try:
        if client.proxy is None:
            where = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            refusal = client.policy.refusal(where)
            if refusal is not None:
                if sink.transfer is not None:
                    sink.transfer.refused = f"{where} is {refusal}"
                return pycurl.SOCKET_BAD
        return socket.socket(family, socktype, protocol)
    except Exception:
        logger.exception("Webhook client: opening a socket failed")
        return pycurl.SOCKET_BAD


def _result(
    transfer: _Transfer, sink: _Sink, handle: pycurl.Curl, code: int, message: str
) -> SendResult:
    """The result of a transfer libcurl ended with ``code`` (0: an answer) and ``message``."""
    status = handle.getinfo(pycurl.RESPONSE_CODE) or None
    error: str | None = None
    if sink.too_large or code == pycurl.E_FILESIZE_EXCEEDED:
        error = f"answer too large: over {sink.cap:,} bytes"
    elif code:
        error = _error(transfer, handle, code, message, status)
    content_type = retry_after = None
    if status is not None:
        raw = handle.getinfo_raw(pycurl.CONTENT_TYPE)
        content_type = raw.decode("latin-1") if raw else None
        retry_after = float(handle.getinfo(pycurl.RETRY_AFTER)) or None
    return SendResult(
        status_code=status,
        elapsed=time.monotonic() - transfer.job.started,
        body=b"".join(sink.chunks),
        content_type=content_type,
        retry_after=retry_after,
        error=error,
        timed_out=code == pycurl.E_OPERATION_TIMEDOUT,
    )


#: What each libcurl error becomes in the delivery log: its prefix.
PREFIXES = {
    pycurl.E_COULDNT_CONNECT: "connection failed",
    pycurl.E_PEER_FAILED_VERIFICATION: "TLS certificate not accepted",
    pycurl.E_SSL_CACERT_BADFILE: "TLS certificate not accepted",
    pycurl.E_SSL_CONNECT_ERROR: "TLS handshake failed",
    pycurl.E_FTP_WEIRD_SERVER_REPLY: "malformed answer",  # CURLE_WEIRD_SERVER_REPLY
    pycurl.E_UNSUPPORTED_PROTOCOL: "malformed answer",  # an answer that is not HTTP/1.x
    TOO_LARGE: "malformed answer",
    pycurl.E_RECV_ERROR: "reading the response failed",
    pycurl.E_PARTIAL_FILE: "reading the response failed",
    pycurl.E_SEND_ERROR: "sending the request failed",
}


def _error(
    transfer: _Transfer, handle: pycurl.Curl, code: int, message: str, status: int | None
) -> str:
    """Why a transfer failed, in the words the delivery log uses."""
    message = message or DESCRIPTIONS.get(code, f"libcurl error {code}")
    if transfer.refused is not None:
        return f"forbidden destination: {transfer.refused}"
    if code == pycurl.E_GOT_NOTHING:
        return "the receiver closed the connection without answering"
    if code == pycurl.E_OPERATION_TIMEDOUT:
        if status is not None:
            return "timed out reading the response"
        sent = handle.getinfo(pycurl.REQUEST_SIZE) > 0  # on a new or a reused connection
        if not sent and not handle.getinfo(pycurl.CONNECT_TIME):
            return f"timed out: connecting did not finish ({message})"
        if not sent and transfer.route.url.startswith("https:"):
            return "timed out: the TLS handshake did not finish"
        return f"timed out: no complete answer within {transfer.job.timeout:g} s"
    prefix = PREFIXES.get(code, "reading the response failed" if status is not None else None)
    return f"{prefix}: {message}" if prefix else f"{message} (libcurl error {code})"
