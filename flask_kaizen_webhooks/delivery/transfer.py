"""One POST as libcurl carries it: the route worked out from its URL, the answer read up to its
cap, the request's header lines, and what came of it (a :class:`SendResult`, whatever the
receiver did)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import pycurl

from ..guard import AddressPolicy, IPAddress, ascii_name, literal_address

logger = logging.getLogger("flask_kaizen_webhooks")

T = TypeVar("T")
DEFAULT_PORTS = {"http": 80, "https": 443}
#: libcurl's CURLE_TOO_LARGE: an answer's head beyond libcurl's limits.
TOO_LARGE = 100
#: What a libcurl error means, for those it may give without a message.
DESCRIPTIONS = {TOO_LARGE: "its head is beyond libcurl's limits"}


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How a client sends: its caps, time limits, address policy, CA bundle and proxy."""

    max_response_bytes: int
    max_active: int
    connect_timeout: float
    policy: AddressPolicy
    ca_bundle: str | None
    proxy: str | None
    name: str
    #: Told how many attempts start (positive) or end (negative), for metrics.
    count_attempts: Callable[[int], None] | None = None


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
    #: Called on the client's thread as it starts, before its request is made.
    starting: Callable[[], None] = lambda: None


@dataclass(eq=False, slots=True)
class Transfer:
    """A job under way: its host being looked up, then with libcurl."""

    job: Job[Any]
    route: Route
    ends: float
    #: Why the guard refused the address libcurl was about to open a socket to.
    refused: str | None = None


class Sink:
    """The answer of the transfer a handle carries, up to the cap (one per handle)."""

    __slots__ = ("cap", "chunks", "size", "too_large", "transfer")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.reset(None)

    def reset(self, transfer: Transfer | None) -> None:
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


def header_lines(headers: dict[str, str]) -> list[bytes]:
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


def open_socket(options: ClientOptions, sink: Sink, _purpose: int, address: Any) -> Any:
    """Called by libcurl for every socket it opens: the address is judged first, and a
    forbidden one gets no socket (the proxy's is the operator's choice)."""
    family, socktype, protocol, sockaddr = address
    try:
        if options.proxy is None:
            where = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            refusal = options.policy.refusal(where)
            if refusal is not None:
                if sink.transfer is not None:
                    sink.transfer.refused = f"{where} is {refusal}"
                return pycurl.SOCKET_BAD
        return socket.socket(family, socktype, protocol)
    except Exception:
        logger.exception("Webhook client: opening a socket failed")
        return pycurl.SOCKET_BAD


def result_of(
    transfer: Transfer, sink: Sink, handle: pycurl.Curl, code: int, message: str
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
    TOO_LARGE: "answer too large",
    pycurl.E_RECV_ERROR: "reading the response failed",
    pycurl.E_PARTIAL_FILE: "reading the response failed",
    pycurl.E_SEND_ERROR: "sending the request failed",
}


def _error(
    transfer: Transfer, handle: pycurl.Curl, code: int, message: str, status: int | None
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
