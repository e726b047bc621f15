"""The HTTP client that sends webhooks: HTTP/1.1 POSTs over pooled keep-alive connections, no
redirects, no proxies, one deadline per attempt from the name lookup to the last byte, and a
capped read of the answer.

Each URL's host is resolved once per attempt; every address is checked against the
:class:`~flask_kaizen_webhooks.guard.AddressPolicy`, and the connection goes to a checked address
(the pool is keyed by it), never to a second lookup, while the ``Host`` header, TLS SNI and the
certificate check keep the original name.

The client speaks just what a webhook needs, strictly (see :mod:`.http1`): one request written in
one go, then the status line, the headers and a body framed by ``Content-Length``, chunked
encoding or the end of the connection. Every socket operation gets only the time left before the
attempt's deadline, so a receiver that answers one byte at a time is cut off at the deadline.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, urlsplit

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
from .http1 import Malformed, Response, read_response, send_all

logger = logging.getLogger("flask_kaizen_webhooks")

#: Name lookups under way at once, at most (each on a thread of its own): far more than one
#: owner's registrations can name.
MAX_LOOKUPS = 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Destinations (address, port, TLS name) whose idle connections are kept, least recent dropped.
MAX_DESTINATIONS = 256


class ResolveTimeout(Exception):
    """Looking a host's name up took longer than the attempt may."""


class Lookups:
    """Name lookups, each on a thread of its own, so that one integrator's slow names never
    hold up the lookups of anyone else's. A name already being looked up is not looked up a
    second time: its callers share the answer. At most ``limit`` names are looked up at once;
    past that a lookup fails at once rather than queueing behind lookups that hang."""

    def __init__(self, resolver: Resolver, *, limit: int = MAX_LOOKUPS) -> None:
        self.resolver = resolver
        self.limit = limit
        self._lock = threading.Lock()
        self._under_way: dict[tuple[str, int], concurrent.futures.Future[Sequence[IPAddress]]] = {}

    def resolve(self, host: str, port: int, timeout: float) -> Sequence[IPAddress]:
        """The addresses of ``host``, waiting ``timeout`` seconds at most (then
        :class:`ResolveTimeout`; the lookup goes on, for whoever asks next)."""
        key = (host.lower(), port)
        with self._lock:
            future = self._under_way.get(key)
            if future is None:
                if len(self._under_way) >= self.limit:
                    raise OSError(f"{self.limit} name lookups are under way; try again later")
                future = self._under_way[key] = concurrent.futures.Future()
                try:
                    threading.Thread(
                        target=self._look_up,
                        args=(key, future),
                        name="kaizen-webhooks-dns",
                        daemon=True,
                    ).start()
                except RuntimeError as exc:  # no thread can start now: nothing left behind
                    del self._under_way[key]
                    raise OSError(f"no thread to look {host!r} up: {exc}") from None
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise ResolveTimeout(host) from None

    def _look_up(
        self, key: tuple[str, int], future: concurrent.futures.Future[Sequence[IPAddress]]
    ) -> None:
        try:
            future.set_result(self.resolver(*key))
        except BaseException as exc:  # handed to every caller waiting for this name
            future.set_exception(exc)
        finally:
            with self._lock:
                if self._under_way.get(key) is future:
                    del self._under_way[key]


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


@dataclass(frozen=True, slots=True)
class Route:
    """What sending to one URL needs, worked out once per URL."""

    scheme: str
    host: str
    port: int
    #: The request target: path and query, with spaces, controls and non-ASCII %-encoded.
    target: str
    #: The ``Host`` header: the name, and the port when it is not the scheme's default.
    host_header: str


@lru_cache(maxsize=4096)
def route(url: str) -> Route:
    """The :class:`Route` of ``url``; ValueError (saying why) if it is not an absolute http(s)
    URL. An internationalized host is sent (looked up, in ``Host`` and TLS SNI) in its ASCII
    form."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    explicit_port = parts.port
    if scheme not in DEFAULT_PORTS or not host:
        raise ValueError("not an absolute http(s) URL")
    if "%" in host:
        raise ValueError("the host carries a zone (%) or percent-encoding")
    try:
        host = ascii_name(host)
    except ValueError as exc:
        raise ValueError(f"the host is {exc}") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = f"[{host}]" if ":" in host else host
    if explicit_port is not None and explicit_port != DEFAULT_PORTS[scheme]:
        host_header += f":{explicit_port}"
    return Route(
        scheme,
        host,
        explicit_port or DEFAULT_PORTS[scheme],
        quote(target, safe="".join(map(chr, range(0x21, 0x7F)))),
        host_header,
    )


class Failed(Exception):
    """An attempt ended without a complete answer; ``message`` says why."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out


class Transport:
    """Sends POSTs over pools of keep-alive connections; safe to share between threads."""

    def __init__(
        self,
        *,
        max_response_bytes: int,
        pool_size: int,
        policy: AddressPolicy | None = None,
        resolver: Resolver = resolve,
        ca_bundle: str | None = None,
    ) -> None:
        self.max_response_bytes = max_response_bytes
        self.pool_size = pool_size
        self.ca_bundle = ca_bundle
        self.policy = policy or AddressPolicy()
        self.resolver = resolver
        self._lock = threading.Lock()
        self._idle: OrderedDict[tuple[str, str, int], list[socket.socket]] = OrderedDict()
        self._pid = os.getpid()
        self._tls: ssl.SSLContext | None = None
        self._lookups = Lookups(resolver)
        #: The address each host name was last connected to (what per-host caps count).
        self.addresses = AddressBook()

    def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout: float,
        connect_timeout: float,
    ) -> SendResult:
        """POST ``body`` to ``url``; the whole attempt ends within about ``timeout`` seconds."""
        started = time.monotonic()
        try:
            return self._post(url, body, headers, timeout, connect_timeout, started)
        except Exception as exc:  # a defect: still an answer, never an exception
            logger.exception("Webhook to %s: unexpected error", url)
            return failure(started, f"internal error: {type(exc).__name__}")

    def _post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        connect_timeout: float,
        started: float,
    ) -> SendResult:
        deadline = started + timeout
        prepared = self.prepare(url, headers, body, started)
        if isinstance(prepared, SendResult):
            return prepared
        where, request = prepared
        key = pool_key(where)
        sock = self._take_idle(key)
        try:
            if sock is None:
                sock = self.open(where, deadline, connect_timeout)
            send_all(sock, request, deadline)
            response = read_response(sock, deadline, self.max_response_bytes)
        except Exception as exc:
            _close(sock)
            return failure_of(exc, started, timeout)
        try:
            return result_of(response, started)
        finally:
            if response.reusable:
                self._keep_idle(key, sock)
            else:
                _close(sock)

    def prepare(
        self, url: str, headers: dict[str, str], body: bytes, started: float
    ) -> tuple[Route, bytes] | SendResult:
        """The route and the bytes of a POST of ``body`` to ``url``, or the failure that stops
        it before any connection."""
        if self._pid != os.getpid():
            self.after_fork()
        try:
            where = route(url)
        except ValueError as exc:
            return failure(started, f"invalid URL: {exc}")
        try:
            return where, _request(where, headers, body)
        except ValueError as exc:
            return failure(started, f"invalid request: {exc}")

    def open(self, where: Route, deadline: float, connect_timeout: float) -> socket.socket:
        """A new blocking connection for ``where``: its name looked up (bounded by ``deadline``),
        every address checked against the policy, the first one connected to (and TLS for
        https); :class:`Failed` when it cannot be made, or not in time.

        A connection goes to an address checked when it was made, so a pooled one is reused
        without a second lookup."""
        try:
            addresses = self.policy.checked_addresses(
                where.host, where.port, self._resolver_until(deadline)
            )
        except ForbiddenDestination as exc:
            logger.warning("Webhook to %s refused before connecting: %s", where.host, exc.reason)
            raise Failed(f"forbidden destination: {exc.reason}") from None
        except ResolveTimeout:
            raise Failed(
                f"timed out: resolving {where.host!r} did not finish in time", timed_out=True
            ) from None
        # The first checked address; the others were checked too but are not tried, so one
        # attempt makes at most one connection.
        self.addresses.note(where.host, addresses[0])
        return self._connect(where, addresses[0], deadline, connect_timeout)

    def _connect(
        self, where: Route, address: IPAddress, deadline: float, connect_timeout: float
    ) -> socket.socket:
        """A new connection to ``address`` (TLS for https, speaking and verified for the URL's
        name); :class:`Failed` when it cannot be made in time."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failed("timed out: no time left to connect", timed_out=True)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(connect_timeout, remaining))
            try:
                sock.connect((str(address), where.port))
            except TimeoutError:
                raise Failed(
                    f"timed out: connecting to {address} took over "
                    f"{min(connect_timeout, remaining):g} s",
                    timed_out=True,
                ) from None
            except OSError as exc:
                raise Failed(f"connection failed: {_reason(exc)}") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if where.scheme == "https":
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                try:
                    return self._tls_context().wrap_socket(sock, server_hostname=where.host)
                except TimeoutError:
                    raise Failed(
                        "timed out: the TLS handshake did not finish", timed_out=True
                    ) from None
                except ssl.SSLCertVerificationError as exc:
                    raise Failed(
                        f"TLS certificate not accepted: {exc.verify_message or exc}"
                    ) from None
                except (ssl.SSLError, OSError, ValueError) as exc:
                    raise Failed(f"TLS handshake failed: {_reason(exc)}") from None
            return sock
        except BaseException:
            sock.close()
            raise

    def _tls_context(self) -> ssl.SSLContext:
        """Certificates required and checked against the name; the system's authorities or
        ``ca_bundle``."""
        with self._lock:
            if self._tls is None:
                context = ssl.create_default_context(cafile=self.ca_bundle)
                context.set_alpn_protocols(["http/1.1"])
                self._tls = context
            return self._tls

    def _take_idle(self, key: tuple[str, str, int]) -> socket.socket | None:
        """A pooled connection to ``key`` that the receiver has not closed, if there is one."""
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                sock = idle.pop()
                if _still_open(sock):
                    self._idle.move_to_end(key)
                    return sock
                sock.close()
            return None

    def _keep_idle(self, key: tuple[str, str, int], sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(idle) < self.pool_size:
                idle.append(sock)
                sock = None  # type: ignore[assignment]
            while len(self._idle) > MAX_DESTINATIONS:
                _key, dropped = self._idle.popitem(last=False)
                for old in dropped:
                    old.close()
        if sock is not None:
            sock.close()

    def _resolver_until(self, deadline: float) -> Resolver:
        """The resolver, bounded by ``deadline``: a name is looked up on a thread of its own
        (the system resolver cannot be interrupted; see :class:`Lookups`) and
        :class:`ResolveTimeout` raised when the deadline passes first. An address literal needs
        no lookup."""

        def resolve_until(host: str, port: int) -> Sequence[IPAddress]:
            literal = literal_address(host)
            if literal is not None:
                return [literal]
            return self._lookups.resolve(host, port, max(0.0, deadline - time.monotonic()))

        return resolve_until

    def after_fork(self) -> None:
        """In a forked child: the parent's connections, lookups and locks are not its own."""
        self._lock = threading.Lock()
        self._clear_locked()
        self._lookups = Lookups(self.resolver)
        self.addresses = AddressBook()
        self._pid = os.getpid()

    def close(self) -> None:
        """Close every pooled connection (they come back if the transport is used again)."""
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
        self._idle.clear()


def _request(where: Route, headers: dict[str, str], body: bytes) -> bytes:
    """The bytes of a POST of ``body`` to ``where``; ValueError for a header that would break
    the request's framing."""
    lines = [f"POST {where.target} HTTP/1.1\r\nHost: {where.host_header}\r\n"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or ":" in name or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} holds a line break or a colon")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(lines).encode("latin-1") + body


def _still_open(sock: socket.socket) -> bool:
    """True while an idle connection has nothing to read: a receiver that closed it (or sent
    something unasked) makes it readable."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return not poll.poll(0)


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()


def pool_key(where: Route) -> tuple[str, str, int]:
    """What pooled connections are kept by: scheme, name (or address literal) and port."""
    return (where.scheme, where.host, where.port)


def failure_of(exc: Exception, started: float, timeout: float) -> SendResult:
    """The result of an exchange that raised ``exc`` (any other exception is re-raised)."""
    if isinstance(exc, Failed):
        return failure(started, exc.message, timed_out=exc.timed_out)
    if isinstance(exc, TimeoutError):
        return failure(
            started, f"timed out: no complete answer within {timeout:g} s", timed_out=True
        )
    if isinstance(exc, Malformed):
        return failure(started, f"malformed answer: {exc}")
    if isinstance(exc, OSError):
        return failure(started, f"{type(exc).__name__}: {_reason(exc)}")
    raise exc


def result_of(response: Response, started: float) -> SendResult:
    """The result of an exchange that read ``response``."""
    error = response.error
    return SendResult(
        status_code=response.status,
        elapsed=time.monotonic() - started,
        body=response.body,
        content_type=response.header("content-type"),
        retry_after=parse_retry_after(response.header("retry-after")),
        error=error,
        timed_out=error is not None and error.startswith("timed out"),
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def failure(started: float, error: str, *, timed_out: bool = False) -> SendResult:
    """The result of an attempt that ended with ``error`` and no answer."""
    return SendResult(
        status_code=None,
        elapsed=time.monotonic() - started,
        body=b"",
        content_type=None,
        retry_after=None,
        error=error,
        timed_out=timed_out,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:300]
    reason = getattr(exc, "reason", None) or exc
    return str(reason)[:300]
