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

import concurrent.futures
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
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import pycurl

from .destinations import AddressBook
from .guard import (
    ALLOW_NETWORK_HINT,
    AddressPolicy,
    ForbiddenDestination,
    IPAddress,
    Resolver,
    ascii_name,
    is_local_name,
    literal_address,
    resolve,
)

logger = logging.getLogger("flask_kaizen_webhooks")

T = TypeVar("T")
#: Name lookups under way at once, at most (each on a thread of its own).
MAX_LOOKUPS = 1024
#: Seconds a host's checked addresses are used before it is looked up again.
PIN_SECONDS = 60.0
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
    start_by: float = float("inf")
    #: The ``time.monotonic()`` the attempt ends by, however late it started.
    end_by: float = float("inf")
    #: When it started (``time.monotonic()``), set by the client.
    started: float = 0.0


class Lookups:
    """Name lookups, each on a thread of its own, so that one integrator's slow names never
    hold up the lookups of anyone else's. A name already being looked up is not looked up a
    second time: its callers share the answer. At most ``limit`` names are looked up at once;
    past that a lookup fails at once rather than queueing behind lookups that hang."""

    def __init__(self, resolver: Resolver, *, limit: int = MAX_LOOKUPS) -> None:
        self.resolver = resolver
        self.limit = limit
        self._lock = threading.Lock()
        self.under_way: dict[tuple[str, int], concurrent.futures.Future[Sequence[IPAddress]]] = {}

    def look_up(self, host: str, port: int) -> concurrent.futures.Future[Sequence[IPAddress]]:
        """The addresses of ``host``, to come."""
        key = (host.lower(), port)
        with self._lock:
            future = self.under_way.get(key)
            if future is None:
                future = concurrent.futures.Future()
                if len(self.under_way) >= self.limit:
                    future.set_exception(OSError(f"{self.limit} name lookups are under way"))
                    return future
                self.under_way[key] = future
                try:
                    threading.Thread(
                        target=self._run,
                        args=(key, future),
                        name="kaizen-webhooks-dns",
                        daemon=True,
                    ).start()
                except RuntimeError as exc:  # no thread can start now: nothing left behind
                    del self.under_way[key]
                    future.set_exception(OSError(f"no thread to look {host!r} up: {exc}"))
            return future

    def _run(
        self, key: tuple[str, int], future: concurrent.futures.Future[Sequence[IPAddress]]
    ) -> None:
        try:
            future.set_result(self.resolver(*key))
        except BaseException as exc:  # handed to every caller waiting for this name
            future.set_exception(exc)
        finally:
            with self._lock:
                if self.under_way.get(key) is future:
                    del self.under_way[key]


@dataclass(eq=False, slots=True)
class _Transfer:
    """A job under way: looking its host up, then with libcurl."""

    job: Job[Any]
    route: Route
    ends: float
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    too_large: bool = False
    #: Why the guard refused the address libcurl was about to open a socket to.
    refused: str | None = None


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
        self.after_fork()

    def after_fork(self) -> None:
        """Start afresh (in a forked child: the parent's thread, connections and lookups are not
        this process's; its libcurl handles are left alone, never closed here, so that nothing
        is written to the parent's connections)."""
        if getattr(self, "_loop", None) is not None:
            _ABANDONED.append(self._loop)
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._pid = os.getpid()
        self.lookups = Lookups(self.resolver)
        #: The address each host name was last connected to (what per-host caps count).
        self.addresses = AddressBook()
        self._pins: dict[tuple[str, int], tuple[IPAddress, float]] = {}

    @property
    def load(self) -> int:
        """Jobs sent here and not finished (a hint, read without a lock)."""
        loop = self._loop
        return 0 if loop is None else loop.load

    def send(self, *jobs: Job[Any]) -> None:
        """Make the POSTs of ``jobs`` (from any thread); each result goes to its ``done``."""
        with self._lock:
            if self._pid != os.getpid():
                self.after_fork()
            if self._loop is None or not self._loop.taking:
                self._loop = _Loop(self)
        self._loop.take(jobs)

    def post(self, url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> SendResult:
        """POST ``body`` to ``url`` and wait for the result (within about ``timeout`` seconds)."""
        return self.post_all([(url, body, headers)], timeout=timeout)[0]

    def post_all(
        self, requests: Sequence[tuple[str, bytes, dict[str, str]]], *, timeout: float
    ) -> list[SendResult]:
        """POST every ``(url, body, headers)`` of ``requests`` at once, and return their results
        in order when all are in, or at the deadline ``timeout`` seconds from now (those still
        under way then time out)."""
        started = time.monotonic()
        deadline = started + timeout
        results: list[SendResult | None] = [None] * len(requests)
        all_in = threading.Event()
        left = [len(requests)]

        def done(index: int, result: SendResult) -> None:
            results[index] = result
            left[0] -= 1  # on the client's one thread
            if not left[0]:
                all_in.set()

        self.send(
            *(
                Job(url, body, headers, timeout, index, done, start_by=deadline, end_by=deadline)
                for index, (url, body, headers) in enumerate(requests)
            )
        )
        if requests:
            all_in.wait(max(0.0, deadline - time.monotonic()) + (GRACE if timeout > 0 else 0))
        late = failure(started, f"timed out: no answer within {timeout:g} s", timed_out=True)
        return [result or late for result in results]

    def stop(self, timeout: float) -> list[Job[Any]]:
        """Start nothing new, let the attempts under way finish for up to ``timeout`` seconds,
        then close every connection; the jobs not finished come back (their ``done`` is not
        called). The client starts again on its next use."""
        with self._lock:
            loop, self._loop = self._loop, None
        return [] if loop is None else loop.stop(timeout)

    def close(self) -> None:
        """Close every connection (the client starts again on its next use)."""
        self.stop(0.0)

    # The address guard ----------------------------------------------------------------------

    def pinned(self, where: Route) -> IPAddress | None:
        """The checked address ``where``'s host goes to, if it was judged recently; an address
        literal is judged here and now (ForbiddenDestination if it may not be called)."""
        pin = self._pins.get((where.host, where.port))
        if pin is not None and pin[1] > time.monotonic():
            return pin[0]
        return None if where.literal is None else self.pin(where, [where.literal])

    def judge_unresolved(self, where: Route) -> None:
        """What can be judged of ``where`` without looking its host up (with a proxy, which
        does): an address literal, a local name, the port (ForbiddenDestination)."""
        if where.literal is not None:
            self.pin(where, [where.literal])
        elif is_local_name(where.host):
            raise ForbiddenDestination(f"{where.host!r} is a local name. {ALLOW_NETWORK_HINT}")
        else:
            self.policy.check_port(where.port, [])

    def pin(self, where: Route, addresses: Sequence[IPAddress]) -> IPAddress:
        """Judge every address a lookup of ``where``'s host gave (ForbiddenDestination if one
        may not be called); the first is used for :data:`PIN_SECONDS`, so that one attempt
        makes at most one connection."""
        checked = self.policy.checked_addresses(where.host, where.port, lambda _h, _p: addresses)
        if len(self._pins) >= MAX_CONNECTIONS * 16:
            self._pins.clear()
        self._pins[(where.host, where.port)] = (checked[0], time.monotonic() + PIN_SECONDS)
        self.addresses.note(where.host, checked[0])
        return checked[0]


#: libcurl handles of a parent process, in a forked child: kept, never cleaned up there.
_ABANDONED: list[Any] = []


class _Loop:
    """One run of a client's thread: a ``CurlMulti`` driven by ``socket_action`` over an epoll
    selector, plus a socket that wakes it when jobs arrive. Everything here but :meth:`take`,
    :meth:`stop` and :attr:`load` runs on that thread."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.taking = True
        self._inbox: queue.SimpleQueue[Job[Any] | tuple[_Transfer, Any]] = queue.SimpleQueue()
        self._jobs: set[Job[Any]] = set()  # every job taken and not finished
        self._waiting: deque[Job[Any]] = deque()
        self._looking_up: set[_Transfer] = set()
        self._active = 0  # started: looking up or with libcurl
        self._idle_handles: list[pycurl.Curl] = []
        self._transfers: dict[pycurl.Curl, _Transfer] = {}  # each handle's, while it is in use
        self._poller = _Poller()
        self._watched: dict[int, int] = {}  # each socket libcurl watches, and for which events
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._poller.register(self._wake_in.fileno(), select.POLLIN)
        self._signalled = False
        self._timer: float | None = None  # when libcurl wants its timeout action
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi.setopt(pycurl.M_MAXCONNECTS, MAX_CONNECTIONS)
        self._stop_by: float | None = None
        self._thread = threading.Thread(target=self._run, name=client.name, daemon=True)
        self._thread.start()

    @property
    def load(self) -> int:
        return len(self._jobs) + self._inbox.qsize()

    def take(self, jobs: Sequence[Job[Any]]) -> None:
        if threading.current_thread() is self._thread:  # from a ``done``: no need to wake
            self._jobs.update(jobs)
            self._waiting.extend(jobs)
            return
        for job in jobs:
            self._inbox.put(job)
        self._signal()

    def stop(self, timeout: float) -> list[Job[Any]]:
        self.taking = False
        self._stop_by = time.monotonic() + timeout
        self._signal()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout + GRACE)
        left = _copy(self._jobs)  # the thread may not have ended
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Job):
                left.add(item)
        self._jobs.clear()
        return list(left)

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
        for fd, mask in self._poller.poll(self._wait()):
            if fd == wake:
                self._drain_wake()
                continue
            flags = (pycurl.CSELECT_IN if mask & select.POLLIN else 0) | (
                pycurl.CSELECT_OUT if mask & select.POLLOUT else 0
            )
            if mask & (select.POLLERR | select.POLLHUP):
                flags |= pycurl.CSELECT_ERR
            self._multi.socket_action(fd, flags)
        self._take_inbox()
        now = time.monotonic()
        for transfer in [t for t in self._looking_up if t.ends <= now]:
            self._looking_up.discard(transfer)
            host = transfer.route.host
            self._end(transfer, f"timed out: resolving {host!r} did not finish in time", True)
        self._start_waiting()
        if self._timer is not None and self._timer <= time.monotonic():
            self._timer = None
            self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        self._collect()

    def _wait(self) -> float | None:
        """Seconds until the loop has something to do without being woken."""
        if self._waiting and self._active < self.client.max_active and self.taking:
            return 0.0
        times = [t.ends for t in self._looking_up]
        if self._timer is not None:
            times.append(self._timer)
        if self._stop_by is not None:
            times.append(self._stop_by)
        return None if not times else max(0.0, min(times) - time.monotonic())

    def _signal(self) -> None:
        if not self._signalled:
            self._signalled = True
            with contextlib.suppress(OSError):  # full, or closed: the loop is awake or gone
                self._wake_out.send(b"\0")

    def _drain_wake(self) -> None:
        # Drained first, then cleared: a flag still set means a byte is on its way.
        with contextlib.suppress(OSError):
            while self._wake_in.recv(4096):
                pass
        self._signalled = False

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
            logger.debug("Webhook client: socket %d could not be watched", fd, exc_info=True)

    def _on_timer(self, milliseconds: int) -> None:
        self._timer = None if milliseconds < 0 else time.monotonic() + milliseconds / 1000

    def _take_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Job):
                self._jobs.add(item)
                self._waiting.append(item)
            else:
                self._resolved(*item)

    # Attempts -------------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        while self._waiting and self._active < self.client.max_active and self.taking:
            job = self._waiting.popleft()
            now = time.monotonic()
            if now >= min(job.start_by, job.end_by):
                self._late(job)
                continue
            self._active += 1
            job.started = now  # the deadline counts from here
            self._begin(job)

    def _late(self, job: Job[Any]) -> None:
        self._jobs.discard(job)
        try:
            if job.late is not None:
                job.late(job.context)
            else:
                job.done(
                    job.context,
                    failure(time.monotonic(), "timed out before sending", timed_out=True),
                )
        except Exception:
            logger.exception("Webhook client: handing back a late job failed")

    def _begin(self, job: Job[Any]) -> None:
        try:
            where = route(job.url)
        except ValueError as exc:
            self._finish(job, failure(job.started, f"invalid URL: {exc}"))
            return
        transfer = _Transfer(job, where, min(job.started + job.timeout, job.end_by))
        try:
            if self.client.proxy is not None:  # the proxy looks the name up, and judges it
                self.client.judge_unresolved(where)
                self._add(transfer, None)
                return
            address = self.client.pinned(where)
        except ForbiddenDestination as exc:
            self._refuse(transfer, exc.reason)
            return
        if address is not None:
            self._add(transfer, address)
            return
        self._looking_up.add(transfer)
        future = self.client.lookups.look_up(where.host, where.port)
        future.add_done_callback(partial(self._looked_up, transfer))

    def _looked_up(self, transfer: _Transfer, future: Any) -> None:
        """On the lookup's thread (or this one): the answer goes to the loop."""
        self._inbox.put((transfer, future))
        self._signal()

    def _resolved(self, transfer: _Transfer, future: Any) -> None:
        if transfer not in self._looking_up:
            return  # timed out already
        self._looking_up.discard(transfer)
        try:
            address = self.client.pin(transfer.route, future.result())
        except ForbiddenDestination as exc:
            self._refuse(transfer, exc.reason)
            return
        except Exception as exc:
            self._refuse(transfer, f"cannot resolve {transfer.route.host!r}: {exc}")
            return
        self._add(transfer, address)

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
        handle = self._idle_handles.pop() if self._idle_handles else self._new_handle()
        self._transfers[handle] = transfer
        handle.setopt(pycurl.URL, where.url)
        handle.setopt(pycurl.HTTPHEADER, lines)
        handle.setopt(pycurl.POSTFIELDS, job.body)
        handle.setopt(pycurl.WRITEFUNCTION, partial(_write, transfer, self.client))
        handle.setopt(pycurl.TIMEOUT_MS, max(1, int(remaining * 1000)))
        handle.setopt(
            pycurl.CONNECTTIMEOUT_MS,
            max(1, int(min(remaining, self.client.connect_timeout) * 1000)),
        )
        if address is None or where.literal is not None:
            handle.setopt(pycurl.RESOLVE, [])
        else:  # "+": the entry leaves libcurl's cache like any other, when it is old
            shown = f"[{address}]" if address.version == 6 else str(address)
            handle.setopt(pycurl.RESOLVE, [f"+{where.host}:{where.port}:{shown}"])
        self._multi.add_handle(handle)

    def _new_handle(self) -> pycurl.Curl:
        client = self.client
        handle = pycurl.Curl()
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.POST, 1)
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        handle.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        handle.setopt(pycurl.HTTP_CONTENT_DECODING, 0)
        handle.setopt(pycurl.PATH_AS_IS, 1)
        handle.setopt(pycurl.MAXFILESIZE_LARGE, client.max_response_bytes)
        if client.proxy is not None:
            handle.setopt(pycurl.PROXY, client.proxy)
            handle.setopt(pycurl.HTTPPROXYTUNNEL, 1)
            handle.setopt(pycurl.NOPROXY, "")  # no exceptions, whatever the environment says
        else:
            handle.setopt(pycurl.NOPROXY, "*")
        if client.ca_bundle is not None:
            handle.setopt(pycurl.CAINFO, client.ca_bundle)
        handle.setopt(
            pycurl.OPENSOCKETFUNCTION, partial(_open_socket, client, self._transfers, handle)
        )
        return handle

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
        transfer = self._transfers.pop(handle)
        try:
            result = _result(transfer, handle, code, message, self.client.max_response_bytes)
        except Exception as exc:
            logger.exception("Webhook to %s: unexpected error", transfer.route.host)
            result = failure(transfer.job.started, f"internal error: {type(exc).__name__}")
        self._multi.remove_handle(handle)
        self._idle_handles.append(handle)
        self._finish(transfer.job, result)

    def _end(self, transfer: _Transfer, error: str, timed_out: bool = False) -> None:
        self._finish(transfer.job, failure(transfer.job.started, error, timed_out=timed_out))

    def _finish(self, job: Job[Any], result: SendResult) -> None:
        self._active -= 1
        self._jobs.discard(job)
        try:
            job.done(job.context, result)
        except Exception:
            logger.exception("Webhook client: handling a result failed")

    def _close(self) -> None:
        self.taking = False
        for handle in list(self._idle_handles):
            handle.close()
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


def _copy(jobs: set[Job[Any]]) -> set[Job[Any]]:
    """A copy of ``jobs``, which another thread may be changing."""
    while True:
        with contextlib.suppress(RuntimeError):
            return set(jobs)


def _header_lines(headers: dict[str, str]) -> list[str]:
    """The request's header lines (libcurl's own ``Expect`` and ``Accept`` left out);
    ValueError for one that would break the request's framing."""
    lines = ["Expect:", "Accept:"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or ":" in name or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} holds a line break or a colon")
        lines.append(f"{name}: {value}")
    return lines


def _write(transfer: _Transfer, client: Client, data: bytes) -> int | None:
    """Keep the answer's bytes, up to the cap; past it the transfer is aborted."""
    transfer.size += len(data)
    if transfer.size > client.max_response_bytes:
        transfer.too_large = True
        return 0  # fewer bytes than given: libcurl ends the transfer
    transfer.chunks.append(data)
    return None


def _open_socket(
    client: Client,
    transfers: dict[pycurl.Curl, _Transfer],
    handle: pycurl.Curl,
    _purpose: int,
    address: Any,
) -> Any:
    """Called by libcurl for every socket it opens: the address is judged first, and a
    forbidden one gets no socket (the proxy's is the operator's choice)."""
    family, socktype, protocol, sockaddr = address
    try:
        if client.proxy is None:
            where = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            refusal = client.policy.refusal(where)
            if refusal is not None:
                transfer = transfers.get(handle)
                if transfer is not None:
                    transfer.refused = f"{where} is {refusal}"
                return pycurl.SOCKET_BAD
        return socket.socket(family, socktype, protocol)
    except Exception:
        logger.exception("Webhook client: opening a socket failed")
        return pycurl.SOCKET_BAD


def _result(
    transfer: _Transfer, handle: pycurl.Curl, code: int, message: str, cap: int
) -> SendResult:
    """The result of a transfer libcurl ended with ``code`` (0: an answer) and ``message``."""
    job = transfer.job
    status = handle.getinfo(pycurl.RESPONSE_CODE) or None
    error: str | None = None
    timed_out = code == pycurl.E_OPERATION_TIMEDOUT
    if transfer.too_large or code == pycurl.E_FILESIZE_EXCEEDED:
        error = f"answer too large: over {cap:,} bytes"
    elif code:
        error = _error(transfer, handle, code, message, status)
    retry_after = handle.getinfo(pycurl.RETRY_AFTER) if status else 0
    return SendResult(
        status_code=status,
        elapsed=time.monotonic() - job.started,
        body=b"".join(transfer.chunks),
        content_type=handle.getinfo(pycurl.CONTENT_TYPE) if status else None,
        retry_after=float(retry_after) if retry_after else None,
        error=error,
        timed_out=timed_out,
    )


def _error(
    transfer: _Transfer, handle: pycurl.Curl, code: int, message: str, status: int | None
) -> str:
    """Why a transfer failed, in the words the delivery log uses."""
    message = message or DESCRIPTIONS.get(code, f"libcurl error {code}")
    if transfer.refused is not None:
        return f"forbidden destination: {transfer.refused}"
    if code == pycurl.E_OPERATION_TIMEDOUT:
        if status is not None:
            return "timed out reading the response"
        if not handle.getinfo(pycurl.CONNECT_TIME):
            return f"timed out: connecting did not finish ({message})"
        if transfer.route.url.startswith("https:") and not handle.getinfo(pycurl.APPCONNECT_TIME):
            return "timed out: the TLS handshake did not finish"
        return f"timed out: no complete answer within {transfer.job.timeout:g} s"
    if code == pycurl.E_COULDNT_CONNECT:
        return f"connection failed: {message}"
    if code in (pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE):
        return f"TLS certificate not accepted: {message}"
    if code == pycurl.E_SSL_CONNECT_ERROR:
        return f"TLS handshake failed: {message}"
    if code == pycurl.E_GOT_NOTHING:
        return "the receiver closed the connection without answering"
    if code in (pycurl.E_FTP_WEIRD_SERVER_REPLY, pycurl.E_UNSUPPORTED_PROTOCOL, TOO_LARGE):
        return f"malformed answer: {message}"
    if status is not None or code in (pycurl.E_RECV_ERROR, pycurl.E_PARTIAL_FILE):
        return f"reading the response failed: {message}"
    if code == pycurl.E_SEND_ERROR:
        return f"sending the request failed: {message}"
    return f"{message} (libcurl error {code})"
