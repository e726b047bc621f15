"""Integrators' secrets at rest: sealed in the database, opened only to sign."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.fernet import Fernet
from jose import jws
from sqlalchemy import create_engine, text

from flask_kaizen_webhooks import ConfigurationError
from flask_kaizen_webhooks.sealing import SecretBox, SecretUnreadable
from tests.conftest import ADMIN, DELIVERY_CONFIG, register

SECRET = "integrators_secret_value_0123"


def stored_secrets(host: Any) -> list[str]:
    url = (
        host.app.config.get("SQLALCHEMY_DATABASE_URI")
        or host.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    )
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT secret FROM kaizen_webhook_registrations")).all()
    engine.dispose()
    return [row.secret for row in rows]


def test_the_database_never_holds_the_plain_secret(
    make_host: Any, backend: str, receiver: Any
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG)
    server = receiver()
    register(host, server.url(), topic="user_logged_in", secret=SECRET)
    [stored] = stored_secrets(host)
    assert SECRET not in stored
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"u": 1})
    assert result.ok  # opened to sign
    from jose import jws

    assert jws.verify(server.received[0].body.decode(), SECRET, algorithms=["HS256"])


def test_key_rotation_with_the_cli(make_host: Any, receiver: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    server = receiver()
    first = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_SECRET_KEYS=[old])
    registration = register(first, server.url(), topic="user_logged_in", secret=SECRET)
    # Mid-rotation of the integrator's secret: the previous one still signs, sealed as well.
    rotated = first.app.test_client().post(
        f"/v2/webhooks/registrations/{registration['id']}/rotate-secret",
        json={"rev": registration["rev"], "secret": "the_next_secret_0123", "overlap_seconds": 600},
        headers=ADMIN,
    )
    assert rotated.status_code == 200, rotated.get_json()
    database = first.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    both = make_host(
        "sqlite",
        **DELIVERY_CONFIG,
        KAIZEN_WEBHOOKS_DATABASE_URI=database,
        KAIZEN_WEBHOOKS_SECRET_KEYS=[new, old],
    )
    result = both.app.test_cli_runner().invoke(args=["webhooks", "rotate-keys"])
    assert result.exit_code == 0 and "secrets of 1 registration." in result.output
    only_new = make_host(
        "sqlite",
        **DELIVERY_CONFIG,
        KAIZEN_WEBHOOKS_DATABASE_URI=database,
        KAIZEN_WEBHOOKS_SECRET_KEYS=[new],
    )
    with only_new.app.app_context():
        [ok] = only_new.webhooks.trigger("user_logged_in", {"u": 1})
    assert ok.ok, ok.error  # both secrets opened: signed with the previous, the next alongside
    assert jws.verify(server.received[0].body.decode(), SECRET, algorithms=["HS256"])
    assert "Webhook-Signature-Next" in server.received[0].headers
    # With only the old key nothing can be opened any more: a clear error, nothing sent.
    only_old = make_host(
        "sqlite",
        **DELIVERY_CONFIG,
        KAIZEN_WEBHOOKS_DATABASE_URI=database,
        KAIZEN_WEBHOOKS_SECRET_KEYS=[old],
    )
    with only_old.app.app_context():
        [failed] = only_old.webhooks.trigger("user_logged_in", {"u": 2})
    assert not failed.ok and "cannot be decrypted" in (failed.error or "")
    assert len(server.received) == 1


def test_box_errors_are_clear() -> None:
    with pytest.raises(ConfigurationError, match="Fernet"):
        SecretBox([b"not-a-key"])
    with pytest.raises(ConfigurationError, match="list"):
        SecretBox.from_config("one-key-not-a-list", "k")
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        SecretBox.from_config(None, None)
    box = SecretBox.from_config(None, "app-secret")
    sealed = box.seal(SECRET)
    assert box.open(sealed) == SECRET and sealed != box.seal(SECRET)  # fresh IV every time
    with pytest.raises(SecretUnreadable):
        SecretBox.from_config(None, "another-app-secret").open(sealed)
    assert SECRET not in repr(box) and SECRET not in str(SecretUnreadable("x"))


def test_bad_secret_keys_fail_at_init_app(make_host: Any) -> None:
    with pytest.raises(ConfigurationError, match="KAIZEN_WEBHOOKS_SECRET_KEYS"):
        make_host("sqlite", KAIZEN_WEBHOOKS_SECRET_KEYS=["nope"])


def test_a_login_whose_hooks_cannot_be_signed_does_not_wait_for_the_deadline(
    make_host: Any, receiver: Any
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    first = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_SECRET_KEYS=[old])
    register(first, receiver().url(), topic="user_logged_in", secret=SECRET)
    key_lost = make_host(
        "sqlite",
        **DELIVERY_CONFIG,
        KAIZEN_WEBHOOKS_DATABASE_URI=first.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"],
        KAIZEN_WEBHOOKS_SECRET_KEYS=[new],
        KAIZEN_WEBHOOKS_SYNC_TIMEOUT=5,
    )
    with key_lost.app.app_context():
        started = time.monotonic()
        [failed] = key_lost.webhooks.trigger("user_logged_in", {"u": 1})
        took = time.monotonic() - started
    assert not failed.ok and "cannot be decrypted" in (failed.error or "")
    assert took < 2.5  # nothing was sent, so nothing was waited for (the deadline is 5 s)
