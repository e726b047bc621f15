"""Typed settings built once per app from the ``KAIZEN_WEBHOOKS_*`` configuration keys."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from flask import Flask

from .errors import ConfigurationError

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
}

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
        )


def _bool(value: Any, name: str) -> bool:
    raw = value(name)
    if not isinstance(raw, bool):
        raise ConfigurationError(PREFIX + name, f"expected True or False, got {raw!r}")
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
