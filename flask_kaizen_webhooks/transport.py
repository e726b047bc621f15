"""The HTTP client that sends webhooks: pooled keep-alive connections, no redirects, no proxies
from the environment, a time limit per attempt and a capped read of the answer.

Each URL's host is resolved once per attempt; every address is checked against the
:class:`~flask_kaizen_webhooks.guard.AddressPolicy`, and the connection goes to a checked address
(the pool is keyed by it), never to a second lookup, while the ``Host`` header, TLS SNI and the
certificate check keep the original name.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from .guard import (
    AddressPolicy,
    ForbiddenDestination,
    IPAddress,
    Resolver,
    literal_address,
    resolve,
)
from .watchdog import POOL_CLASSES, Deadline, Watchdog

logger = logging.getLogger("flask_kaizen_webhooks")

READ_CHUNK = 16 * 1024
LOOKUP_THREADS = 8
DEFAULT_PORTS = {"http": 80, "https": 443}


class ResolveTimeout(Exception):
    """Looking a host's name up took longer than the attempt may."""


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


class Transport:
    """Sends POSTs over a pool of keep-alive connections; safe to share between threads."""

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
        self.ca_bundle = ca_bundle
        self.policy = policy or AddressPolicy()
        self.resolver = resolver
        # urllib3 reads no proxy settings from the environment, unlike requests.
        self._pool = urllib3.PoolManager(num_pools=256, maxsize=pool_size, block=False)
        self._pool.pool_classes_by_scheme = POOL_CLASSES
        self._watchdog = Watchdog()
        self._lookups = concurrent.futures.ThreadPoolExecutor(
            max_workers=LOOKUP_THREADS, thread_name_prefix="kaizen-webhooks-dns"
        )

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
        deadline = started + timeout
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme.lower(), parts.hostname or ""
            port = parts.port or DEFAULT_PORTS.get(scheme, 0)
        except ValueError as exc:
            return _failure(started, f"invalid URL: {exc}")
        if scheme not in DEFAULT_PORTS or not host:
            return _failure(started, "invalid URL: not an absolute http(s) URL")
        try:
            addresses = self.policy.checked_addresses(host, port, self._resolver_until(deadline))
        except ForbiddenDestination as exc:
            logger.warning("Webhook to %s refused before connecting: %s", host, exc.reason)
            return _failure(started, f"forbidden destination: {exc.reason}")
        except ResolveTimeout:
            return _failure(
                started, f"timed out: resolving {host!r} took over {timeout:g} s", timed_out=True
            )
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host_header = f"[{host}]" if ":" in host else host
        if parts.port is not None and parts.port != DEFAULT_PORTS[scheme]:
            host_header += f":{parts.port}"
        pool_kwargs: dict[str, Any] = {}
        if scheme == "https":
            # Connected to the checked address, yet TLS speaks (SNI) and verifies for the name.
            pool_kwargs = {
                "server_hostname": host,
                "assert_hostname": host,
                "cert_reqs": "CERT_REQUIRED",
            }
            if self.ca_bundle is not None:
                pool_kwargs["ca_certs"] = self.ca_bundle
        # The first checked address; the others were checked too but are not tried, so one
        # attempt makes at most one connection.
        pool = self._pool.connection_from_host(
            str(addresses[0]), port, scheme, pool_kwargs=pool_kwargs
        )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _failure(started, f"timed out: no answer within {timeout:g} s", timed_out=True)
        watch = self._watchdog.arm(deadline)
        try:
            return self._exchange(
                pool,
                target,
                body,
                headers,
                host_header,
                watch,
                urllib3.Timeout(connect=min(connect_timeout, remaining), read=remaining),
                timeout,
                started,
                deadline,
            )
        finally:
            self._watchdog.disarm(watch)

    def _exchange(
        self,
        pool: urllib3.HTTPConnectionPool,
        target: str,
        body: bytes,
        headers: dict[str, str],
        host_header: str,
        watch: Deadline,
        socket_timeout: urllib3.Timeout,
        timeout: float,
        started: float,
        deadline: float,
    ) -> SendResult:
        try:
            response = pool.urlopen(
                "POST",
                target,
                body=body,
                headers={**headers, "Host": host_header},
                timeout=socket_timeout,
                retries=False,
                redirect=False,
                preload_content=False,
                assert_same_host=False,
            )
        except NewConnectionError as exc:  # a subclass of ConnectTimeoutError: test it first
            return _failure(started, f"connection failed: {_reason(exc)}")
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            return _failure(started, f"timed out: {_reason(exc)}", timed_out=True)
        except (ProtocolError, HTTPError, OSError, ValueError) as exc:
            if watch.fired:  # the watchdog cut a receiver that answered too slowly
                return _failure(
                    started, f"timed out: no complete answer within {timeout:g} s", timed_out=True
                )
            return _failure(started, f"{type(exc).__name__}: {_reason(exc)}")
        try:
            data, error = self._read_capped(response, deadline)
        finally:
            # Disarmed before the connection can go back to the pool for another attempt.
            self._watchdog.disarm(watch)
            if watch.fired:
                response.close()
            response.release_conn()
        if watch.fired:
            error = "timed out reading the response"
        return SendResult(
            status_code=response.status,
            elapsed=time.monotonic() - started,
            body=data,
            content_type=response.headers.get("Content-Type"),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            error=error,
            timed_out=error is not None and error.startswith("timed out"),
        )

    def _resolver_until(self, deadline: float) -> Resolver:
        """The resolver, bounded by ``deadline``: a name is looked up on a helper thread (the
        system resolver cannot be interrupted) and :class:`ResolveTimeout` raised when the
        deadline passes first. Address literals need no lookup and stay on this thread."""

        def resolve_until(host: str, port: int) -> Sequence[IPAddress]:
            if literal_address(host) is not None:
                return self.resolver(host, port)
            future = self._lookups.submit(self.resolver, host, port)
            try:
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                raise ResolveTimeout(host) from None

        return resolve_until

    def _read_capped(
        self, response: urllib3.BaseHTTPResponse, deadline: float
    ) -> tuple[bytes, str | None]:
        """Up to ``max_response_bytes`` of the body; a longer or slower body is cut off."""
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= self.max_response_bytes:
                if time.monotonic() > deadline:
                    response.close()
                    return b"".join(chunks), "timed out reading the response"
                chunk = response.read1(
                    READ_CHUNK
                )  # returns what one read gives: no waiting to fill it
                if not chunk:
                    return b"".join(chunks), None
                chunks.append(chunk)
                size += len(chunk)
        except ReadTimeoutError:
            response.close()
            return b"".join(chunks), "timed out reading the response"
        except (ProtocolError, HTTPError, OSError) as exc:
            response.close()
            return b"".join(chunks), f"reading the response failed: {_reason(exc)}"
        # Too long: keep what the cap allows and drop the connection rather than drain it.
        response.close()
        return b"".join(chunks)[: self.max_response_bytes], None

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.clear()
        self._lookups.shutdown(wait=False, cancel_futures=True)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _failure(started: float, error: str, *, timed_out: bool = False) -> SendResult:
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
    reason = getattr(exc, "reason", None) or exc
    return str(reason)[:300]
