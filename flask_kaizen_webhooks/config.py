"""Typed settings built once per app from the ``KAIZEN_WEBHOOKS_*`` configuration keys."""

from __future__ import annotations

import enum
import ipaddress
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from .errors import ConfigurationError
from .guard import AddressPolicy, IPNetwork

PREFIX = "KAIZEN_WEBHOOKS_"

#: Every configuration key with its default value. ``None`` for DATABASE_URI means "an SQLite
#: file in the app's instance folder".
DEFAULTS: dict[str, Any] = {
    "DATABASE_URI": None,
    "URL_PREFIX": "/v2/webhooks",
    "ALLOW_HTTP": False,
    "MAX_BODY_BYTES": 64 * 1024,
    "PAGE_SIZE": 50,
    "MAX_PAGE_SIZE": 200,
    "SQLITE_BUSY_TIMEOUT": 30.0,
    "SYNC_TIMEOUT": 5.0,
    "CONNECT_TIMEOUT": 2.0,
    "ASYNC_TIMEOUT": 15.0,
    "EXECUTOR": None,
    "AUTOSTART": None,
    "DISPATCHER": "thread",
    "CELERY_SWEEP_INTERVAL": 60.0,
    "WORKERS": 8,
    "SYNC_WORKERS": 32,
    "POLL_INTERVAL": 1.0,
    "RETRY_SCHEDULE": (5, 300, 1800, 7200, 18000, 36000, 36000),
    "RETRY_JITTER": 0.2,
    "MAX_RETRY_AFTER": 86400,
    "MAX_RESPONSE_BYTES": 64 * 1024,
    "DISABLE_AFTER_FAILURES": 5,
    "DISABLE_AFTER_SECONDS": 86400,
    "RETENTION_DAYS": 30,
    "ALLOWED_NETWORKS": (),
    "ALLOWED_PORTS": (),
    "SECRET_KEYS": (),
    "MAX_IN_FLIGHT_PER_REGISTRATION": 2,
    "MAX_IN_FLIGHT_PER_HOST": 4,
    "MAX_QUEUE": 10_000,
    "MAX_PAYLOAD_BYTES": 256 * 1024,
    "MAX_REGISTRATIONS_PER_OWNER": 100,
    "TEST_MAX_TARGETS": 10,
    "TEST_CALLS_PER_MINUTE": 10,
    "REDELIVER_CALLS_PER_MINUTE": 60,
    "CLAIM_LEASE": None,
    "SECRET_OVERLAP": 86400,
    "CA_BUNDLE": None,
    "PROXY": None,
}


class Executor(enum.StrEnum):
    """What sends asynchronous deliveries (``KAIZEN_WEBHOOKS_EXECUTOR``)."""

    #: Background threads in the app process.
    THREAD = "thread"
    #: Tasks on the host's Celery workers.
    CELERY = "celery"
    #: Nothing in the app process: ``flask webhooks worker`` sends the outbox.
    NONE = "none"


EXECUTORS = tuple(Executor)

DEFAULT_SQLITE_FILENAME = "kaizen_webhooks.sqlite3"


@dataclass(frozen=True, slots=True)
class Settings:
    """The extension's settings for one app; see ``docs/configuration.rst``."""

    database_uri: str
    url_prefix: str
    allow_http: bool
    max_body_bytes: int
    page_size: int
    max_page_size: int
    sqlite_busy_timeout: float
    sync_timeout: float
    connect_timeout: float
    async_timeout: float
    executor: Executor
    autostart: bool | None
    celery_sweep_interval: float
    workers: int
    sync_workers: int
    poll_interval: float
    retry_schedule: tuple[float, ...]
    retry_jitter: float
    max_retry_after: float
    max_response_bytes: int
    disable_after_failures: int
    disable_after_seconds: float
    retention_days: float
    address_policy: AddressPolicy
    max_in_flight_per_registration: int
    max_in_flight_per_host: int
    max_queue: int
    max_payload_bytes: int
    max_registrations_per_owner: int
    test_max_targets: int
    test_calls_per_minute: int
    redeliver_calls_per_minute: int
    claim_lease: float | None
    secret_overlap: float
    ca_bundle: str | None
    proxy: str | None
    secret_keys: Any

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery stays claimed: longer than any attempt can take."""
        if self.claim_lease is not None:
            return self.claim_lease
        return 2 * (self.async_timeout + self.connect_timeout) + 30

    @classmethod
    def from_app(cls, app: Flask) -> Settings:
        """Read and validate the settings; raise :class:`ConfigurationError` on bad values."""
        for name, default in DEFAULTS.items():
            app.config.setdefault(PREFIX + name, default)

        def value(name: str) -> Any:
            return app.config[PREFIX + name]

        database_uri = value("DATABASE_URI")
        if database_uri is None:
            database_uri = "sqlite:///" + os.path.join(app.instance_path, DEFAULT_SQLITE_FILENAME)
        elif not isinstance(database_uri, str) or "://" not in database_uri:
            raise ConfigurationError(
                PREFIX + "DATABASE_URI", f"expected an SQLAlchemy URL, got {database_uri!r}"
            )

        url_prefix = value("URL_PREFIX")
        if not isinstance(url_prefix, str) or not url_prefix.startswith("/"):
            raise ConfigurationError(
                PREFIX + "URL_PREFIX", f"expected a path starting with '/', got {url_prefix!r}"
            )

        page_size = _positive_int(value, "PAGE_SIZE")
        max_page_size = _positive_int(value, "MAX_PAGE_SIZE")
        if page_size > max_page_size:
            raise ConfigurationError(
                PREFIX + "PAGE_SIZE", f"must not exceed MAX_PAGE_SIZE ({max_page_size})"
            )

        return cls(
            database_uri=database_uri,
            url_prefix=url_prefix.rstrip("/"),
            allow_http=_bool(value, "ALLOW_HTTP"),
            max_body_bytes=_positive_int(value, "MAX_BODY_BYTES"),
            page_size=page_size,
            max_page_size=max_page_size,
            sqlite_busy_timeout=_positive_number(value, "SQLITE_BUSY_TIMEOUT"),
            sync_timeout=_positive_number(value, "SYNC_TIMEOUT"),
            connect_timeout=_positive_number(value, "CONNECT_TIMEOUT"),
            async_timeout=_positive_number(value, "ASYNC_TIMEOUT"),
            executor=_executor(value),
            autostart=_optional_bool(value, "AUTOSTART"),
            celery_sweep_interval=_positive_number(value, "CELERY_SWEEP_INTERVAL"),
            workers=_positive_int(value, "WORKERS"),
            sync_workers=_positive_int(value, "SYNC_WORKERS"),
            poll_interval=_positive_number(value, "POLL_INTERVAL"),
            retry_schedule=_schedule(value, "RETRY_SCHEDULE"),
            retry_jitter=_fraction(value, "RETRY_JITTER"),
            max_retry_after=_positive_number(value, "MAX_RETRY_AFTER"),
            max_response_bytes=_positive_int(value, "MAX_RESPONSE_BYTES"),
            disable_after_failures=_positive_int(value, "DISABLE_AFTER_FAILURES"),
            disable_after_seconds=_non_negative_number(value, "DISABLE_AFTER_SECONDS"),
            retention_days=_positive_number(value, "RETENTION_DAYS"),
            address_policy=AddressPolicy(
                allowed_networks=_networks(value, "ALLOWED_NETWORKS"),
                allowed_ports=frozenset({80, 443, *_ports(value, "ALLOWED_PORTS")}),
            ),
            max_in_flight_per_registration=_positive_int(value, "MAX_IN_FLIGHT_PER_REGISTRATION"),
            max_in_flight_per_host=_positive_int(value, "MAX_IN_FLIGHT_PER_HOST"),
            max_queue=_positive_int(value, "MAX_QUEUE"),
            max_payload_bytes=_positive_int(value, "MAX_PAYLOAD_BYTES"),
            max_registrations_per_owner=_positive_int(value, "MAX_REGISTRATIONS_PER_OWNER"),
            test_max_targets=_positive_int(value, "TEST_MAX_TARGETS"),
            test_calls_per_minute=_positive_int(value, "TEST_CALLS_PER_MINUTE"),
            redeliver_calls_per_minute=_positive_int(value, "REDELIVER_CALLS_PER_MINUTE"),
            claim_lease=_lease(value, "CLAIM_LEASE"),
            secret_overlap=_non_negative_number(value, "SECRET_OVERLAP"),
            ca_bundle=_ca_bundle(value, "CA_BUNDLE"),
            proxy=_proxy(value, "PROXY"),
            secret_keys=value("SECRET_KEYS"),
        )


def _executor(value: Any) -> Executor:
    """``EXECUTOR`` (``thread``, ``celery`` or ``none``), or its former name ``DISPATCHER``."""
    if value("EXECUTOR") is None:
        return Executor(_choice(value, "DISPATCHER", EXECUTORS))
    executor = Executor(_choice(value, "EXECUTOR", EXECUTORS))
    if value("DISPATCHER") not in (DEFAULTS["DISPATCHER"], executor):
        raise ConfigurationError(
            PREFIX + "EXECUTOR", "set either EXECUTOR or its former name DISPATCHER, not both"
        )
    return executor


def _bool(value: Any, name: str) -> bool:
    raw = value(name)
    if not isinstance(raw, bool):
        raise ConfigurationError(PREFIX + name, f"expected True or False, got {raw!r}")
    return raw


def _optional_bool(value: Any, name: str) -> bool | None:
    raw = value(name)
    if raw is not None and not isinstance(raw, bool):
        raise ConfigurationError(PREFIX + name, f"expected True, False or None, got {raw!r}")
    return raw


def _positive_int(value: Any, name: str) -> int:
    raw = value(name)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise ConfigurationError(PREFIX + name, f"expected a positive integer, got {raw!r}")
    return raw


def _positive_number(value: Any, name: str) -> float:
    raw = value(name)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise ConfigurationError(PREFIX + name, f"expected a positive number, got {raw!r}")
    return float(raw)


def _non_negative_number(value: Any, name: str) -> float:
    raw = value(name)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise ConfigurationError(PREFIX + name, f"expected a number >= 0, got {raw!r}")
    return float(raw)


def _fraction(value: Any, name: str) -> float:
    raw = _non_negative_number(value, name)
    if raw >= 1:
        raise ConfigurationError(PREFIX + name, f"expected a fraction from 0 to below 1, got {raw}")
    return raw


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    raw = value(name)
    if raw not in choices:
        raise ConfigurationError(
            PREFIX + name, f"expected one of {', '.join(choices)}; got {raw!r}"
        )
    return str(raw)


def _schedule(value: Any, name: str) -> tuple[float, ...]:
    raw = value(name)
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


def _networks(value: Any, name: str) -> tuple[IPNetwork, ...]:
    raw = value(name)
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise ConfigurationError(PREFIX + name, f"expected a list of CIDR networks, got {raw!r}")
    networks = []
    for item in raw:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise ConfigurationError(PREFIX + name, f"{item!r} is not a CIDR network") from None
    return tuple(networks)


def _ports(value: Any, name: str) -> tuple[int, ...]:
    raw = value(name)
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise ConfigurationError(PREFIX + name, f"expected a list of port numbers, got {raw!r}")
    for port in raw:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigurationError(PREFIX + name, f"{port!r} is not a port number")
    return tuple(raw)


def _lease(value: Any, name: str) -> float | None:
    if value(name) is None:
        return None
    lease = _positive_number(value, name)
    longest = _positive_number(value, "ASYNC_TIMEOUT") + _positive_number(value, "CONNECT_TIMEOUT")
    if lease <= longest:
        raise ConfigurationError(
            PREFIX + name,
            f"must exceed the longest attempt (ASYNC_TIMEOUT + CONNECT_TIMEOUT = {longest:g} s), "
            "or another worker could send a delivery that is still being sent",
        )
    return lease


def _proxy(value: Any, name: str) -> str | None:
    """An egress proxy's URL: ``http://`` or ``https://``, a host, a port."""
    raw = value(name)
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


def _ca_bundle(value: Any, name: str) -> str | None:
    raw = value(name)
    if raw is None:
        return None
    if not isinstance(raw, str) or not os.path.isfile(raw):
        raise ConfigurationError(PREFIX + name, f"expected the path of a PEM file, got {raw!r}")
    return raw
