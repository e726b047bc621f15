"""The integrator's helpers: verify() and the Flask view decorator, on real deliveries."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from jose import jws

from flask_kaizen_webhooks.receiver import (
    ExpiredWebhook,
    InvalidSignature,
    MalformedWebhook,
    verify,
    webhook_view,
)
from flask_kaizen_webhooks.signing import encode_payload, sign, with_request_ids
from tests.conftest import DELIVERY_CONFIG, register

SECRET = "signature_secret_0123"
DOCUMENT = {"id": "p-1", "webhook_request_id": "f47bf223-f5dd-4f58-aa05-28aaa234aa75"}


def signed(document: Any = DOCUMENT, secret: str = SECRET, issued_at: float | None = None) -> str:
    return sign(encode_payload(document), secret, issued_at=issued_at)


def test_verify_returns_the_payload() -> None:
    assert verify(signed(), SECRET) == DOCUMENT
    assert verify(signed().encode(), SECRET) == DOCUMENT
    assert verify(signed() + "\n", SECRET) == DOCUMENT


def test_wrong_secret_or_tampering_is_a_bad_signature() -> None:
    with pytest.raises(InvalidSignature):
        verify(signed(), "another_secret_0123")
    header, _payload, signature = signed().split(".")
    forged = jws.sign({"id": "p-2"}, "attacker_secret_01", algorithm="HS256").split(".")[1]
    with pytest.raises(InvalidSignature):
        verify(f"{header}.{forged}.{signature}", SECRET)


def test_a_key_shaped_secret_matches_nothing_instead_of_raising() -> None:
    # python-jose refuses PEM or SSH public keys as HMAC keys with a JWKError.
    for key in ("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n", "ssh-rsa AAAAB3NzaC1yc2E"):
        with pytest.raises(InvalidSignature):
            verify(signed(), key)
        assert verify(signed(), [key, SECRET]) == DOCUMENT


def test_none_and_other_algorithms_are_refused() -> None:
    unsigned = jws.sign(DOCUMENT, SECRET, algorithm="HS512")
    with pytest.raises(InvalidSignature, match="HS512"):
        verify(unsigned, SECRET)


def test_old_or_future_iat_is_expired_and_max_age_can_be_off() -> None:
    now = time.time()
    with pytest.raises(ExpiredWebhook, match="signed"):
        verify(signed(issued_at=now - 301), SECRET, max_age=300)
    assert verify(signed(issued_at=now - 299), SECRET, max_age=300, now=now) == DOCUMENT
    with pytest.raises(ExpiredWebhook, match="future"):
        verify(signed(issued_at=now + 600), SECRET)
    assert verify(signed(issued_at=now - 10**6), SECRET, max_age=None) == DOCUMENT
    no_iat = jws.sign(encode_payload(DOCUMENT), SECRET, algorithm="HS256")
    with pytest.raises(ExpiredWebhook, match="iat"):
        verify(no_iat, SECRET)


@pytest.mark.parametrize("body", ["", "not-a-jws", "a.b", "a.b.c", "\x00\x01"])
def test_malformed_bodies(body: str) -> None:
    with pytest.raises(MalformedWebhook):
        verify(body, SECRET)


def test_signed_non_object_is_malformed() -> None:
    with pytest.raises(MalformedWebhook, match="object"):
        verify(signed([1, 2]), SECRET)


def test_any_of_several_secrets_during_rotation() -> None:
    assert (
        verify(signed(secret="old_secret_0123456"), ["new_secret_0123456", "old_secret_0123456"])
        == DOCUMENT
    )


def test_webhook_view_on_a_real_delivery(make_host: Any, serve: Any) -> None:
    seen: list[dict[str, Any]] = []
    receiver_app = Flask("receiver")

    @receiver_app.post("/profile_updated")
    @webhook_view(secret=SECRET)
    def profile_updated(payload: dict[str, Any]) -> dict[str, bool]:
        seen.append(payload)
        return {"ok": True}

    base = serve(receiver_app).url
    host = make_host("sqlite", **DELIVERY_CONFIG)
    register(host, f"{base}/profile_updated", topic="user_logged_in", secret=SECRET)
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"user_id": "u-1"})
    assert result.ok and result.response_json == {"ok": True}
    assert seen == [{"user_id": "u-1", "webhook_request_id": result.delivery_id}]
    # Forged and malformed bodies never reach the view.
    forged = requests.post(f"{base}/profile_updated", data=signed(secret="x" * 20), timeout=5)
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "bad_signature"
    junk = requests.post(f"{base}/profile_updated", data="junk", timeout=5)
    assert junk.status_code == 400
    assert len(seen) == 1
    assert json.dumps(seen)  # plain JSON data


@settings(max_examples=200, deadline=None)
@given(
    document=st.dictionaries(
        st.text(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
            max_leaves=8,
        ),
    ).filter(lambda d: "webhook_request_id" not in d),
    ids=st.lists(st.uuids().map(str), max_size=3),
)
def test_request_ids_are_spliced_exactly_as_encoding_the_whole_would(
    document: dict[str, Any], ids: list[str]
) -> None:
    expected = [encode_payload({**document, "webhook_request_id": i}).decode() for i in ids]
    assert with_request_ids(encode_payload(document).decode(), ids) == expected


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=300),
    secret=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",)), min_size=16, max_size=64
    ).filter(lambda s: not s.lstrip().startswith(("-----", "ssh-", "{", "[", '"'))),
    issued_at=st.integers(min_value=0, max_value=2**40),
    kid=st.none() | st.integers(min_value=1, max_value=10**6),
)
def test_signing_gives_python_jose_s_token_byte_for_byte(
    payload: bytes, secret: str, issued_at: int, kid: int | None
) -> None:
    headers: dict[str, Any] = {"iat": issued_at}
    if kid is not None:
        headers["kid"] = str(kid)
    expected = jws.sign(payload, secret, headers=headers, algorithm="HS256")
    assert sign(payload, secret, issued_at=issued_at, kid=kid) == expected
    assert jws.verify(expected, secret, algorithms=["HS256"]) == payload
