"""Secret rotation: the previous secret keeps signing through the overlap, the new signature
rides along, and receivers holding either secret verify."""

from __future__ import annotations

import json
from typing import Any

import jose.jws

from flask_kaizen_webhooks.receiver import verify
from tests.conftest import ADMIN, DELIVERY_CONFIG, register

OLD = "old_secret_value_0123"
NEW = "new_secret_value_4567"


def test_rotation_with_overlap_signs_with_both(make_host: Any, receiver: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver()
    registration = register(host, server.url(), topic="user_logged_in", secret=OLD)
    client = host.app.test_client()
    url = f"/v2/webhooks/registrations/{registration['id']}"
    rotated = client.post(
        f"{url}/rotate-secret", json={"secret": NEW, "rev": registration["rev"]}, headers=ADMIN
    )
    assert rotated.status_code == 200
    body = rotated.get_json()
    assert "secret" not in body  # the caller chose it: never echoed
    assert body["secret_version"] == 2 and body["previous_secret_valid_until"]
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"u": 1})
    assert result.ok
    request = server.received[-1]
    data, next_signature = request.body.decode(), request.headers["Webhook-Signature-Next"]
    # The seed's receiver with the old secret still works during the overlap...
    assert json.loads(jose.jws.verify(data, OLD, algorithms=["HS256"]))["u"] == 1
    assert jose.jws.get_unverified_header(data)["kid"] == "1"
    # ...and one that switched to the new secret verifies through the header.
    assert verify(data, NEW, next_signature=next_signature)["u"] == 1
    assert verify(data, [NEW, OLD])["u"] == 1
    import pytest

    from flask_kaizen_webhooks.receiver import InvalidSignature

    with pytest.raises(InvalidSignature):
        verify(data, NEW)  # without the header the body is the old secret's
    with pytest.raises(InvalidSignature):
        verify(data, "unrelated_secret_999", next_signature=next_signature)


def test_rotation_without_overlap_switches_at_once_and_can_generate(
    make_host: Any, receiver: Any
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver()
    registration = register(host, server.url(), topic="user_logged_in", secret=OLD)
    client = host.app.test_client()
    rotated = client.post(
        f"/v2/webhooks/registrations/{registration['id']}/rotate-secret",
        json={"overlap_seconds": 0},
        headers={**ADMIN, "If-Match": registration["rev"]},
    ).get_json()
    generated = rotated["secret"]  # made for the caller, shown this once
    assert len(generated) >= 32 and rotated["previous_secret_valid_until"] is None
    shown = client.get(f"/v2/webhooks/registrations/{registration['id']}", headers=ADMIN)
    assert generated not in shown.get_data(as_text=True)
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"u": 2})
    assert result.ok
    request = server.received[-1]
    assert "Webhook-Signature-Next" not in request.headers
    assert verify(request.body, generated)["u"] == 2
    assert jose.jws.get_unverified_header(request.body.decode())["kid"] == "2"


def test_put_with_a_new_secret_rotates_with_the_configured_overlap(
    make_host: Any, receiver: Any
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_SECRET_OVERLAP=0)
    server = receiver()
    registration = register(host, server.url(), topic="user_logged_in", secret=OLD)
    response = host.app.test_client().put(
        f"/v2/webhooks/registrations/{registration['id']}",
        json={
            "topic": "user_logged_in",
            "url": server.url(),
            "secret": NEW,
            "rev": registration["rev"],
        },
        headers=ADMIN,
    )
    assert response.status_code == 200
    with host.app.app_context():
        host.webhooks.trigger("user_logged_in", {"u": 3})
    assert verify(server.received[-1].body, NEW)["u"] == 3
