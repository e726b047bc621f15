"""The settings: each declared once, read from ``app.config``, checked with clear messages."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import fields
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from cryptography.fernet import Fernet
from flask import Flask

from flask_kaizen_webhooks import ConfigurationError, KaizenWebhooks, get_state
from flask_kaizen_webhooks.config import (
    DECLARATION,
    DECLARATIONS,
    DEFAULTS,
    FORMER_NAMES,
    Settings,
)
from flask_kaizen_webhooks.guard import AddressPolicy

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


def test_every_setting_is_declared_with_a_default_a_parser_and_a_one_line_docstring() -> None:
    keys = [item.name.upper() for item in fields(Settings)]
    assert all(DECLARATION in item.metadata for item in fields(Settings))
    assert not set(FORMER_NAMES) & set(keys)
    assert list(DECLARATIONS) == keys + list(FORMER_NAMES)
    for name, declaration in DECLARATIONS.items():
        assert re.fullmatch(r"[A-Z][A-Z_]*[A-Z]", name), name
        assert callable(declaration.parse), name
        assert declaration.doc.strip() and "\n" not in declaration.doc, name
    assert {name: declaration.default for name, declaration in DECLARATIONS.items()} == DEFAULTS


def runtime_type(hint: Any) -> Any:
    """What ``isinstance`` can check of a type hint: ``tuple`` for ``tuple[int, ...]``."""
    if isinstance(hint, UnionType):
        return tuple(runtime_type(arg) for arg in get_args(hint))
    return get_origin(hint) or hint


def test_an_app_that_sets_nothing_gets_each_declared_default(tmp_path: Path) -> None:
    app = app_with(tmp_path)
    settings = Settings.from_app(app)
    for name, default in DEFAULTS.items():
        assert app.config[f"KAIZEN_WEBHOOKS_{name}"] == default, name  # written back
    meaning_of_none = {
        "database_uri": f"sqlite:///{tmp_path / 'instance' / 'kaizen_webhooks.sqlite3'}",
        "executor": "thread",
    }
    hints = get_type_hints(Settings)
    for item in fields(Settings):
        value = getattr(settings, item.name)
        assert value == meaning_of_none.get(item.name, DEFAULTS[item.name.upper()]), item.name
        assert isinstance(value, runtime_type(hints[item.name])), item.name
    assert settings.address_policy == AddressPolicy()
    assert settings.lease_seconds == 2 * (15 + 2) + 30


def test_allowed_networks_and_ports_make_the_address_policy(tmp_path: Path) -> None:
    app = app_with(tmp_path, ALLOWED_NETWORKS=["10.20.0.0/16"], ALLOWED_PORTS=[8443])
    assert Settings.from_app(app).address_policy == AddressPolicy(
        allowed_networks=(ipaddress.ip_network("10.20.0.0/16"),),
        allowed_ports=frozenset({80, 443, 8443}),
    )


def test_the_secret_keys_come_from_the_settings(tmp_path: Path) -> None:
    new, old = Fernet.generate_key(), Fernet.generate_key().decode()
    app = app_with(tmp_path, SECRET_KEYS=[new, old], EXECUTOR="none")
    KaizenWebhooks(app)
    state = get_state(app)
    assert state.settings.secret_keys == (new, old.encode())
    sealed = state.secrets.seal("a secret")
    assert Fernet(new).decrypt(sealed.encode()) == b"a secret"
    assert state.secrets.open(Fernet(old).encrypt(b"older").decode()) == "older"
    state.database.dispose()
