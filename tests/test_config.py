"""The settings: each declared once, read from ``app.config``, checked with clear messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_kaizen_webhooks import ConfigurationError, KaizenWebhooks

FERNET_HINT = (
    "make one with python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'"
)


def app_with(tmp_path: Path, **config: Any) -> Flask:
    """An app with a ``SECRET_KEY`` and ``KAIZEN_WEBHOOKS_``-prefixed ``config``."""
    app = Flask("config", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="k")
    app.config.update({f"KAIZEN_WEBHOOKS_{name}": value for name, value in config.items()})
    return app


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URI", "not a url", "DATABASE_URI: expected an SQLAlchemy URL, got 'not a url'"),
        ("DATABASE_URI", 5, "DATABASE_URI: expected an SQLAlchemy URL, got 5"),
        ("URL_PREFIX", "x", "URL_PREFIX: expected a path starting with '/', got 'x'"),
        ("ALLOW_HTTP", "yes", "ALLOW_HTTP: expected True or False, got 'yes'"),
        ("AUTOSTART", "yes", "AUTOSTART: expected True, False or None, got 'yes'"),
        ("MAX_BODY_BYTES", 0, "MAX_BODY_BYTES: expected a positive integer, got 0"),
        ("PAGE_SIZE", True, "PAGE_SIZE: expected a positive integer, got True"),
        ("PAGE_SIZE", 500, "PAGE_SIZE: must not exceed MAX_PAGE_SIZE (200)"),
        ("MAX_PAGE_SIZE", 20, "PAGE_SIZE: must not exceed MAX_PAGE_SIZE (20)"),
        ("SQLITE_BUSY_TIMEOUT", -1, "SQLITE_BUSY_TIMEOUT: expected a positive number, got -1"),
        ("SYNC_TIMEOUT", "5", "SYNC_TIMEOUT: expected a positive number, got '5'"),
        ("DISABLE_AFTER_SECONDS", -1, "DISABLE_AFTER_SECONDS: expected a number >= 0, got -1"),
        ("RETRY_JITTER", 1, "RETRY_JITTER: expected a fraction from 0 to below 1, got 1.0"),
        ("RETRY_JITTER", -0.5, "RETRY_JITTER: expected a number >= 0, got -0.5"),
        (
            "RETRY_SCHEDULE",
            "5, 300",
            "RETRY_SCHEDULE: expected a list of delays in seconds, got '5, 300'",
        ),
        ("RETRY_SCHEDULE", [5, -1], "RETRY_SCHEDULE: delays must be numbers >= 0, got -1"),
        ("EXECUTOR", "threads", "EXECUTOR: expected one of thread, celery, none; got 'threads'"),
        (
            "DISPATCHER",
            "threads",
            "DISPATCHER: expected one of thread, celery, none; got 'threads'",
        ),
        (
            "ALLOWED_NETWORKS",
            "10.0.0.0/8",
            "ALLOWED_NETWORKS: expected a list of CIDR networks, got '10.0.0.0/8'",
        ),
        ("ALLOWED_NETWORKS", ["nope"], "ALLOWED_NETWORKS: 'nope' is not a CIDR network"),
        ("ALLOWED_PORTS", [0], "ALLOWED_PORTS: 0 is not a port number"),
        ("ALLOWED_PORTS", 8443, "ALLOWED_PORTS: expected a list of port numbers, got 8443"),
        (
            "CLAIM_LEASE",
            17,
            "CLAIM_LEASE: must exceed the longest attempt "
            "(ASYNC_TIMEOUT + CONNECT_TIMEOUT = 17 s), "
            "or another worker could send a delivery that is still being sent",
        ),
        ("CLAIM_LEASE", 0, "CLAIM_LEASE: expected a positive number, got 0"),
        (
            "PROXY",
            "socks5://h:1",
            "PROXY: expected a proxy URL such as 'http://proxy.internal:4750', got 'socks5://h:1'",
        ),
        (
            "CA_BUNDLE",
            "/nowhere.pem",
            "CA_BUNDLE: expected the path of a PEM file, got '/nowhere.pem'",
        ),
        ("SECRET_KEYS", "key", "SECRET_KEYS: expected a list of Fernet keys, newest first"),
    ],
)
def test_a_bad_value_is_refused_with_its_message(
    tmp_path: Path, name: str, value: Any, message: str
) -> None:
    app = app_with(tmp_path, **{name: value})
    with pytest.raises(ConfigurationError) as raised:
        KaizenWebhooks(app)
    assert str(raised.value) == f"KAIZEN_WEBHOOKS_{message}"
    assert raised.value.key == f"KAIZEN_WEBHOOKS_{message.split(':')[0]}"


@pytest.mark.parametrize("former", ["celery", "threads"])
def test_the_executor_and_its_former_name_may_not_disagree(tmp_path: Path, former: str) -> None:
    app = app_with(tmp_path, EXECUTOR="none", DISPATCHER=former)
    with pytest.raises(ConfigurationError) as raised:
        KaizenWebhooks(app)
    assert str(raised.value) == (
        "KAIZEN_WEBHOOKS_EXECUTOR: set either EXECUTOR or its former name DISPATCHER, not both"
    )


@pytest.mark.parametrize("key", ["nope", 5, b"short"])
def test_a_secret_key_that_is_no_fernet_key_is_refused(tmp_path: Path, key: object) -> None:
    app = app_with(tmp_path, SECRET_KEYS=[key])
    with pytest.raises(ConfigurationError) as raised:
        KaizenWebhooks(app)
    assert raised.value.key == "KAIZEN_WEBHOOKS_SECRET_KEYS"
    pattern = r"KAIZEN_WEBHOOKS_SECRET_KEYS: not a Fernet key \(.+\); " + re.escape(FERNET_HINT)
    assert re.fullmatch(pattern, str(raised.value))
