"""Typed settings built once per app from the ``KAIZEN_WEBHOOKS_*`` configuration keys.

Each setting is declared once, as a field of :class:`Settings` made by :func:`setting` (its key
is the field's name in capitals): default, parser, meaning. :data:`DEFAULTS` comes from there.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar, cast
from urllib.parse import urlsplit

from flask import Flask

from .errors import ConfigurationError
from .guard import AddressPolicy, IPNetwork
from .sealing import fernet_keys

PREFIX = "KAIZEN_WEBHOOKS_"
DEFAULT_SQLITE_FILENAME = "kaizen_webhooks.sqlite3"
#: Where a field of :class:`Settings` keeps its declaration, in its metadata.
DECLARATION = "kaizen_webhooks_setting"

T = TypeVar("T")


class ExecutorKind(enum.StrEnum):
    """What sends asynchronous deliveries (``KAIZEN_WEBHOOKS_EXECUTOR``)."""

    #: Background threads in the app process.
    THREAD = "thread"
    #: Tasks on the host's Celery workers.
    CELERY = "celery"
    #: Nothing in the app process: ``flask webhooks worker`` sends the outbox.
    NONE = "none"


EXECUTORS = tuple(executor.value for executor in ExecutorKind)


@dataclass(frozen=True, slots=True)
class Given:
    """An app's configuration as given: ``given["PAGE_SIZE"]`` is ``KAIZEN_WEBHOOKS_PAGE_SIZE``."""

    app: Flask

    def __getitem__(self, name: str) -> Any:
        """The value of ``KAIZEN_WEBHOOKS_<name>``."""
        return self.app.config[PREFIX + name]


@dataclass(frozen=True, slots=True)
class Setting(Generic[T]):
    """One setting's declaration: its default, its parser and what it means."""

    default: object
    #: Reads the setting named (without the prefix) and checks it; raises ConfigurationError.
    parse: Callable[[Given, str], T]
    doc: str


def setting(default: object, parse: Callable[[Given, str], T], doc: str) -> T:
    """A field of :class:`Settings`, read from the key named as the field in capitals."""
    return cast(T, field(metadata={DECLARATION: Setting(default, parse, doc)}))


def _database_uri(given: Given, name: str) -> str:
    """An SQLAlchemy URL; None means an SQLite file in the app's instance folder."""
    raw = given[name]
    if raw is None:
        return "sqlite:///" + os.path.join(given.app.instance_path, DEFAULT_SQLITE_FILENAME)
    if not isinstance(raw, str) or "://" not in raw:
        raise ConfigurationError(PREFIX + name, f"expected an SQLAlchemy URL, got {raw!r}")
    return raw


def _url_prefix(given: Given, name: str) -> str:
    """A path starting with ``/``, without a trailing one."""
    raw = given[name]
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise ConfigurationError(PREFIX + name, f"expected a path starting with '/', got {raw!r}")
    return raw.rstrip("/")


def _bool(given: Given, name: str) -> bool:
    """True or False."""
    raw = given[name]
    if not isinstance(raw, bool):
        raise ConfigurationError(PREFIX + name, f"expected True or False, got {raw!r}")
    return raw


def _optional_bool(given: Given, name: str) -> bool | None:
    """True, False or None."""
    raw = given[name]
    if raw is not None and not isinstance(raw, bool):
        raise ConfigurationError(PREFIX + name, f"expected True, False or None, got {raw!r}")
    return raw


def _positive_int(given: Given, name: str) -> int:
    """An integer above 0 (not a bool)."""
    raw = given[name]
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise ConfigurationError(PREFIX + name, f"expected a positive integer, got {raw!r}")
    return raw


def _optional_positive_int(given: Given, name: str) -> int | None:
    """An integer above 0 (not a bool), or None."""
    return None if given[name] is None else _positive_int(given, name)


def _page_size(given: Given, name: str) -> int:
    """A positive integer no larger than ``MAX_PAGE_SIZE``."""
    size, largest = _positive_int(given, name), _positive_int(given, "MAX_PAGE_SIZE")
    if size > largest:
        raise ConfigurationError(PREFIX + name, f"must not exceed MAX_PAGE_SIZE ({largest})")
    return size


def _positive_number(given: Given, name: str) -> float:
    """A number above 0."""
    raw = given[name]
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise ConfigurationError(PREFIX + name, f"expected a positive number, got {raw!r}")
    return float(raw)


def _non_negative_number(given: Given, name: str) -> float:
    """A number from 0 up."""
    raw = given[name]
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise ConfigurationError(PREFIX + name, f"expected a number >= 0, got {raw!r}")
    return float(raw)


def _fraction(given: Given, name: str) -> float:
    """A number from 0 to below 1."""
    raw = _non_negative_number(given, name)
    if raw >= 1:
        raise ConfigurationError(PREFIX + name, f"expected a fraction from 0 to below 1, got {raw}")
    return raw


def _executor_name(given: Given, name: str) -> ExecutorKind:
    """An :class:`ExecutorKind`, by its name."""
    raw = given[name]
    if raw not in EXECUTORS:
        raise ConfigurationError(
            PREFIX + name, f"expected one of {', '.join(EXECUTORS)}; got {raw!r}"
        )
    return ExecutorKind(raw)


def _executor(given: Given, name: str) -> ExecutorKind:
    """An :class:`ExecutorKind`; while None, what its former name ``DISPATCHER`` says."""
    former = FORMER_NAMES["DISPATCHER"]
    if given[name] is None:
        return former.parse(given, "DISPATCHER")
    executor = _executor_name(given, name)
    if given["DISPATCHER"] not in (former.default, executor):
        raise ConfigurationError(
            PREFIX + name, "set either EXECUTOR or its former name DISPATCHER, not both"
        )
    return executor


#: Former names still read, by the setting that took their place; they have no field.
FORMER_NAMES: dict[str, Setting[ExecutorKind]] = {
    "DISPATCHER": Setting(
        "thread", _executor_name, "EXECUTOR's former name, read only while EXECUTOR is None."
    ),
}


def _schedule(given: Given, name: str) -> tuple[float, ...]:
    """A list of delays in seconds, each from 0 up."""
    raw = given[name]
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise ConfigurationError(
            PREFIX + name, f"expected a list of delays in seconds, got {raw!r}"
        )
    delays = []
    for delay in raw:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ConfigurationError(PREFIX + name, f"delays must be numbers >= 0, got {delay!r}")
        delays.append(float(delay))
    return tuple(delays)


def _networks(given: Given, name: str) -> tuple[IPNetwork, ...]:
    """A list of CIDR networks."""
    raw = given[name]
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise ConfigurationError(PREFIX + name, f"expected a list of CIDR networks, got {raw!r}")
    networks = []
    for item in raw:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise ConfigurationError(PREFIX + name, f"{item!r} is not a CIDR network") from None
    return tuple(networks)


def _ports(given: Given, name: str) -> tuple[int, ...]:
    """A list of port numbers."""
    raw = given[name]
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise ConfigurationError(PREFIX + name, f"expected a list of port numbers, got {raw!r}")
    for port in raw:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigurationError(PREFIX + name, f"{port!r} is not a port number")
    return tuple(raw)


def _secret_keys(given: Given, name: str) -> tuple[bytes, ...]:
    """Fernet keys, newest first, as :func:`.sealing.fernet_keys` checks them."""
    return fernet_keys(given[name])


def _lease(given: Given, name: str) -> float | None:
    """None, or a positive number of seconds longer than the longest attempt."""
    if given[name] is None:
        return None
    lease = _positive_number(given, name)
    longest = _positive_number(given, "ASYNC_TIMEOUT") + _positive_number(given, "CONNECT_TIMEOUT")
    if lease <= longest:
        raise ConfigurationError(
            PREFIX + name,
            f"must exceed the longest attempt (ASYNC_TIMEOUT + CONNECT_TIMEOUT = {longest:g} s), "
            "or another worker could send a delivery that is still being sent",
        )
    return lease


def _ca_bundle(given: Given, name: str) -> str | None:
    """None, or the path of a file."""
    raw = given[name]
    if raw is None:
        return None
    if not isinstance(raw, str) or not os.path.isfile(raw):
        raise ConfigurationError(PREFIX + name, f"expected the path of a PEM file, got {raw!r}")
    return raw


def _proxy(given: Given, name: str) -> str | None:
    """An egress proxy's URL: ``http://`` or ``https://``, a host, a port."""
    raw = given[name]
    if raw is None:
        return None
    try:
        parts = urlsplit(raw) if isinstance(raw, str) else None
        port = parts.port if parts is not None else None
    except ValueError:
        parts = port = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise ConfigurationError(
            PREFIX + name, f"expected a proxy URL such as 'http://proxy.internal:4750', got {raw!r}"
        )
    return str(raw)


#: The longest a portal link may last: a week.
MAX_LINK_SECONDS = 7 * 86400


def _link_seconds(given: Given, name: str) -> float:
    """A positive number of seconds, a week at most."""
    seconds = _positive_number(given, name)
    if seconds > MAX_LINK_SECONDS:
        raise ConfigurationError(
            PREFIX + name, f"expected at most {MAX_LINK_SECONDS} seconds, got {seconds!r}"
        )
    return seconds


def _base_url(given: Given, name: str) -> str | None:
    """None, or an ``http://`` or ``https://`` URL without a query, without a trailing ``/``."""
    raw = given[name]
    if raw is None:
        return None
    parts = urlsplit(raw) if isinstance(raw, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ConfigurationError(
            PREFIX + name, f"expected a URL such as 'https://app.example.com', got {raw!r}"
        )
    return str(raw).rstrip("/")


@dataclass(frozen=True, slots=True)
class Settings:
    """The extension's settings for one app; see ``docs/configuration.rst``."""

    database_uri: str = setting(
        None, _database_uri, "The embedded database's URL; None: SQLite in the instance folder."
    )
    url_prefix: str = setting("/v2/webhooks", _url_prefix, "Where the API is mounted.")
    allow_http: bool = setting(False, _bool, "Accept plain http:// URLs at registration.")
    max_body_bytes: int = setting(64 * 1024, _positive_int, "The largest request body read.")
    page_size: int = setting(50, _page_size, "Items per page when the caller gives no limit.")
    max_page_size: int = setting(200, _positive_int, "The largest limit a caller may ask for.")
    sqlite_busy_timeout: float = setting(
        30.0, _positive_number, "Seconds a writer waits for a locked embedded SQLite database."
    )
    sync_timeout: float = setting(5.0, _positive_number, "Seconds a synchronous fan-out waits.")
    connect_timeout: float = setting(2.0, _positive_number, "Seconds to wait for a connection.")
    async_timeout: float = setting(15.0, _positive_number, "Seconds one async attempt may take.")
    executor: ExecutorKind = setting(
        None, _executor, "What sends async deliveries: thread, celery or none; None: DISPATCHER's."
    )
    autostart: bool | None = setting(
        None, _optional_bool, "Start the engine with init_app, on first use, or (None) when served."
    )
    celery_sweep_interval: float = setting(60.0, _positive_number, "Seconds between Celery sweeps.")
    workers: int = setting(32, _positive_int, "Asynchronous attempts one process makes at once.")
    sync_workers: int = setting(32, _positive_int, "Sync webhooks one process sends at once.")
    poll_interval: float = setting(1.0, _positive_number, "Seconds between polls for due work.")
    retry_schedule: tuple[float, ...] = setting(
        (5, 300, 1800, 7200, 18000, 36000, 36000), _schedule, "The delays (s) between attempts."
    )
    retry_jitter: float = setting(0.2, _fraction, "The fraction each delay is spread either way.")
    max_retry_after: float = setting(86400, _positive_number, "The longest Retry-After obeyed (s).")
    max_response_bytes: int = setting(64 * 1024, _positive_int, "The largest receiver answer read.")
    disable_after_failures: int = setting(
        5, _positive_int, "Deliveries failed for good in a row that disable a registration."
    )
    disable_after_seconds: float = setting(
        86400, _non_negative_number, "Seconds since the first of those failures before disabling."
    )
    retention_days: float = setting(30, _positive_number, "Days finished deliveries are kept.")
    allowed_networks: tuple[IPNetwork, ...] = setting(
        (), _networks, "CIDR networks webhooks may reach although they are not public."
    )
    allowed_ports: tuple[int, ...] = setting((), _ports, "Ports allowed besides 80 and 443.")
    secret_keys: tuple[bytes, ...] = setting(
        (), _secret_keys, "Fernet keys for secrets at rest, newest first; none: from SECRET_KEY."
    )
    max_in_flight_per_registration: int = setting(
        16, _positive_int, "Attempts under way at once to one registration, in all processes."
    )
    max_in_flight_per_host: int = setting(
        16, _positive_int, "Attempts at once to one host, in all processes."
    )
    default_max_per_second: int | None = setting(
        None, _optional_positive_int, "Attempts a second per registration without its own limit."
    )
    adaptive_concurrency: bool = setting(
        True, _bool, "Adapt each registration's attempts at once to how its receiver answers."
    )
    metrics: bool | None = setting(
        None,
        _optional_bool,
        "Prometheus metrics: None on when prometheus-client is installed, True required, "
        "False off.",
    )
    metrics_per_registration: bool = setting(
        False, _bool, "Count attempts by registration too: a series per registration."
    )
    health_max_delay: float = setting(
        300, _positive_number, "Seconds due work may wait before /health answers 503."
    )
    max_queue: int = setting(10_000, _positive_int, "Delivery ids a process keeps in memory.")
    max_payload_bytes: int = setting(256 * 1024, _positive_int, "The largest payload, as JSON.")
    max_registrations_per_owner: int = setting(
        100, _positive_int, "How many registrations one owner may have."
    )
    test_max_targets: int = setting(10, _positive_int, "Most registrations a POST /test sends to.")
    test_calls_per_minute: int = setting(10, _positive_int, "Owner's POST /test calls per minute.")
    redeliver_calls_per_minute: int = setting(
        60, _positive_int, "Redelivery calls one owner may make per minute."
    )
    claim_lease: float | None = setting(None, _lease, "Seconds a claim lasts (see lease_seconds).")
    secret_overlap: float = setting(
        86400, _non_negative_number, "Seconds webhooks stay signed with the previous secret too."
    )
    ca_bundle: str | None = setting(None, _ca_bundle, "Trusted CAs' PEM file; None: the system's.")
    proxy: str | None = setting(None, _proxy, "Egress proxy for every webhook; None: none.")
    propagate_trace: bool = setting(
        False, _bool, "Send each attempt's W3C traceparent header (OpenTelemetry) to receivers."
    )
    portal: bool = setting(True, _bool, "Serve the integrator portal at <prefix>/portal.")
    portal_link_seconds: float = setting(
        3600, _link_seconds, "Seconds a portal link lasts unless its maker says otherwise."
    )
    portal_base_url: str | None = setting(
        None, _base_url, "The host's public URL, for portal links made outside a request."
    )

    @property
    def address_policy(self) -> AddressPolicy:
        """Which addresses and ports webhooks may reach: ALLOWED_NETWORKS and ALLOWED_PORTS."""
        ports = frozenset({80, 443, *self.allowed_ports})
        return AddressPolicy(allowed_networks=self.allowed_networks, allowed_ports=ports)

    @property
    def every_registration_paced(self) -> bool:
        """Whether every registration has a rate limit (the operator's default, at least)."""
        return self.default_max_per_second is not None

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery stays claimed: longer than any attempt can take."""
        if self.claim_lease is not None:
            return self.claim_lease
        return 2 * (self.async_timeout + self.connect_timeout) + 30

    @classmethod
    def from_app(cls, app: Flask) -> Settings:
        """Read and validate the settings, after writing the defaults of unset keys back into
        ``app.config``; raise :class:`ConfigurationError` on bad values."""
        for name, default in DEFAULTS.items():
            app.config.setdefault(PREFIX + name, default)
        given = Given(app)
        return cls(
            **{
                item.name: item.metadata[DECLARATION].parse(given, item.name.upper())
                for item in fields(cls)
            }
        )


#: Every setting's declaration by its key without the prefix: the fields, then former names.
DECLARATIONS: dict[str, Setting[Any]] = {
    **{item.name.upper(): item.metadata[DECLARATION] for item in fields(Settings)},
    **FORMER_NAMES,
}

#: Every key with its default. ``None`` for DATABASE_URI means "an SQLite file in the app's
#: instance folder".
DEFAULTS: dict[str, Any] = {name: declaration.default for name, declaration in DECLARATIONS.items()}
