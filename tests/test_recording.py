"""``webhooks.recording()``: what an app would send, captured for the host's own tests, with
nothing sent and nothing written to the outbox."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select

from flask_kaizen_webhooks import WebhooksError, get_state, signals
from flask_kaizen_webhooks.recording import SentWebhook
from flask_kaizen_webhooks.storage import registrations
from flask_kaizen_webhooks.storage.tables import Delivery, Event
from tests.conftest import DELIVERY_CONFIG, register
from tests.receivers import wait_until

PROFILE = {"id": "p-1", "email": "ann@example.com"}
LOGIN = {"user_id": "u-1", "sso": {"email": "ann@example.com"}}


@pytest.fixture
def host(make_host: Any, backend: str) -> Any:
    return make_host(backend, **DELIVERY_CONFIG)


def stored(host: Any) -> tuple[int, int]:
    """How many deliveries and events the outbox holds."""
    with host.app.app_context(), get_state(host.app).database.independent_session() as session:
        deliveries = session.scalar(select(func.count()).select_from(Delivery))
        events = session.scalar(select(func.count()).select_from(Event))
    return int(deliveries or 0), int(events or 0)


def test_signals_are_recorded_per_registration_and_nothing_is_sent(
    host: Any, receiver: Any
) -> None:
    server = receiver()
    profile = register(host, server.url("/profile"))
    login = register(host, server.url("/login"), topic="user_logged_in")
    other = register(host, server.url("/other"), topic="booking_updated")
    with host.app.app_context(), host.webhooks.recording() as sent:
        ids = signals.profile_updated.send(host.app, payload=PROFILE)[0][1]
        [result] = host.webhooks.trigger("user_logged_in", LOGIN)
    assert [webhook.topic for webhook in sent] == ["profile_updated", "user_logged_in"]
    first, second = sent
    assert isinstance(first, SentWebhook)
    assert (first.registration_id, first.owner) == (profile["id"], "org-1")
    assert first.url == server.url("/profile")
    assert first.payload == {**PROFILE, "webhook_request_id": first.delivery_id}
    assert ids == [first.delivery_id]
    assert second.registration_id == login["id"]
    assert result.ok and result.delivery_id == second.delivery_id
    assert result.registration_id == login["id"] and result.status_code is None
    assert other["id"] not in {webhook.registration_id for webhook in sent}
    time.sleep(0.3)  # several of the engine's polls
    assert server.received == []
    assert stored(host) == (0, 0)


def test_sending_resumes_when_the_block_ends(host: Any, receiver: Any) -> None:
    server = receiver()
    register(host, server.url())
    with host.app.app_context():
        with host.webhooks.recording() as sent:
            host.webhooks.trigger("profile_updated", PROFILE)
        [delivery_id] = host.webhooks.trigger("profile_updated", PROFILE)
    assert len(sent) == 1 and sent[0].delivery_id != delivery_id
    wait_until(lambda: len(server.received) == 1)
    assert server.received[0].headers["Webhook-Id"] == delivery_id


def test_nested_recordings_each_get_every_webhook_and_errors_still_raise(host: Any) -> None:
    register(host, "http://127.0.0.1:9/hook")
    with host.app.app_context(), host.webhooks.recording() as outer:
        host.webhooks.trigger("profile_updated", PROFILE)
        with host.webhooks.recording() as inner:
            host.webhooks.trigger("profile_updated", {"id": "p-2"})
        with pytest.raises(WebhooksError, match="webhook_request_id"):
            host.webhooks.trigger("profile_updated", {"webhook_request_id": "mine"})
    assert [webhook.payload["id"] for webhook in outer] == ["p-1", "p-2"]
    assert [webhook.payload["id"] for webhook in inner] == ["p-2"]


def test_a_recording_holds_for_its_own_app_only(make_host: Any, receiver: Any) -> None:
    server = receiver()
    recorded, live = make_host(**DELIVERY_CONFIG), make_host(**DELIVERY_CONFIG)
    for host in (recorded, live):
        register(host, server.url())
    with recorded.app.app_context(), recorded.webhooks.recording() as sent, live.app.app_context():
        live.webhooks.trigger("profile_updated", PROFILE)
    assert sent == []
    wait_until(lambda: len(server.received) == 1)


def test_the_payload_recorded_is_the_json_the_receiver_would_get(host: Any) -> None:
    register(host, "http://127.0.0.1:9/hook")
    document = {"tags": ("a", "b"), "nested": {"n": 1}, 7: "seven"}
    with host.app.app_context(), host.webhooks.recording() as sent:
        host.webhooks.trigger("profile_updated", document)
    document["nested"]["n"] = 2  # type: ignore[index]
    [webhook] = sent
    assert webhook.payload == {
        "tags": ["a", "b"],
        "nested": {"n": 1},
        "7": "seven",
        "webhook_request_id": webhook.delivery_id,
    }


def test_a_registration_in_the_hosts_open_transaction_is_recorded_as_it_would_be_sent(
    make_host: Any,
) -> None:
    host = make_host("sqlite-hostdb", **DELIVERY_CONFIG)
    with host.app.app_context():
        session = get_state().database.session  # the host's, with the tables made
        registrations.create_registration(
            session,
            owner="org-1",
            topic="profile_updated",
            url="http://127.0.0.1:9/hook",
            sealed_secret=get_state().secrets.seal("signature_secret_0123"),
        )  # flushed, not committed: the host's transaction is open
        with host.webhooks.recording() as sent:
            ids = host.webhooks.trigger("profile_updated", PROFILE)
        assert len(ids) == 1 and [webhook.delivery_id for webhook in sent] == ids
        session.rollback()
