"""The integrators' delivery endpoints: test, the delivery log, redelivery."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import jose.jws
import pytest
from sqlalchemy import select, update

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage.tables import Delivery
from flask_kaizen_webhooks.topics import BUILTIN_TOPICS
from tests.conftest import ADMIN, DELIVERY_CONFIG, OTHER_ADMIN, USER, register
from tests.receivers import Reply, wait_until

PREFIX = "/v2/webhooks"
SECRET = "signature_secret_0123"


@pytest.fixture
def host(make_host: Any, backend: str) -> Any:
    return make_host(backend, **DELIVERY_CONFIG)


def test_test_sends_the_sample_payload_and_answers_the_results(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(body=b'{"received": true}'))
    registration = register(host, server.url("/profile_updated"), secret=SECRET)
    client = host.app.test_client()
    # The seed's own example misspells the topic: a clear 422 tells which exist.
    typo = client.post(f"{PREFIX}/test", json={"topic": "profile_uploaded"}, headers=ADMIN)
    assert typo.status_code == 422
    assert "profile_updated" in typo.get_json()["error"]["valid_topics"]
    response = client.post(f"{PREFIX}/test", json={"topic": "profile_updated"}, headers=ADMIN)
    assert response.status_code == 200
    [result] = response.get_json()["deliveries"]
    assert result["registration_id"] == registration["id"]
    assert (result["ok"], result["status_code"], result["response"]) == (
        True,
        200,
        {"received": True},
    )
    [request] = server.received
    payload = json.loads(jose.jws.verify(request.body.decode(), SECRET, algorithms=["HS256"]))
    sample = next(t for t in BUILTIN_TOPICS if t.name == "profile_updated").sample_payload
    assert payload == {**sample, "webhook_request_id": result["delivery_id"]}
    # It is in the delivery log, marked as a test.
    shown = client.get(f"{PREFIX}/deliveries/{result['delivery_id']}", headers=ADMIN).get_json()
    assert (shown["mode"], shown["status"]) == ("test", "succeeded")


def test_test_reports_a_failing_server(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=500, body=b"stack trace"))
    register(host, server.url())
    response = host.app.test_client().post(
        f"{PREFIX}/test", json={"topic": "profile_updated"}, headers=ADMIN
    )
    [result] = response.get_json()["deliveries"]
    assert (result["ok"], result["status_code"], result["error"]) == (False, 500, "HTTP 500")


def test_test_without_a_matching_registration_is_404(host: Any, receiver: Any) -> None:
    server = receiver()
    mine = register(host, server.url())
    theirs = register(host, server.url("/theirs"), headers=OTHER_ADMIN)
    client = host.app.test_client()
    for body in (
        {"topic": "booking_updated"},
        {"topic": "profile_updated", "registration_id": theirs["id"]},
        {"topic": "booking_updated", "registration_id": mine["id"]},
    ):
        response = client.post(f"{PREFIX}/test", json=body, headers=ADMIN)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "no_registration"
    picked = client.post(
        f"{PREFIX}/test",
        json={"topic": "profile_updated", "registration_id": mine["id"]},
        headers=ADMIN,
    )
    assert [d["registration_id"] for d in picked.get_json()["deliveries"]] == [mine["id"]]
    assert [r.path for r in server.received] == ["/hook"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 422, "missing_field"),
        ({"topic": "profile_updated", "extra": 1}, 422, "unknown_field"),
        ({"topic": 5}, 422, "invalid_type"),
    ],
)
def test_test_bad_input(host: Any, body: Any, status: int, code: str) -> None:
    response = host.app.test_client().post(f"{PREFIX}/test", json=body, headers=ADMIN)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_delivery_log_pages_newest_first_with_attempts(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=500) if n == 1 else Reply())
    registration = register(host, server.url())
    ids = []
    with host.app.app_context():
        for n in range(3):
            ids += host.webhooks.trigger("profile_updated", {"n": n})
    client = host.app.test_client()
    url = f"{PREFIX}/registrations/{registration['id']}/deliveries"
    wait_until(
        lambda: (
            all(
                d["status"] == "succeeded"
                for d in client.get(url, headers=ADMIN).get_json()["items"]
            )
            and len(server.received) == 4
        )
    )
    seen, cursor = [], None
    while True:
        page = client.get(
            url + "?limit=2" + (f"&cursor={cursor}" if cursor else ""), headers=ADMIN
        ).get_json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [d["id"] for d in seen] == list(reversed(ids))
    retried = next(d for d in seen if d["attempts"] == 2)
    detail = client.get(f"{PREFIX}/deliveries/{retried['id']}", headers=ADMIN).get_json()
    assert [a["status_code"] for a in detail["attempts_log"]] == [500, 200]
    assert detail["payload"]["webhook_request_id"] == retried["id"]
    assert detail["next_attempt_at"] is None and detail["completed_at"]
    assert SECRET not in json.dumps(detail)


def test_deliveries_are_owner_scoped(host: Any, receiver: Any) -> None:
    server = receiver()
    registration = register(host, server.url())
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    client = host.app.test_client()
    for method, path in (
        ("GET", f"/registrations/{registration['id']}/deliveries"),
        ("GET", f"/deliveries/{delivery_id}"),
        ("POST", f"/deliveries/{delivery_id}/redeliver"),
    ):
        assert client.open(PREFIX + path, method=method, headers=OTHER_ADMIN).status_code == 404
        assert client.open(PREFIX + path, method=method, headers=USER).status_code == 403
        assert client.open(PREFIX + path, method=method).status_code == 401


def test_redeliver_sends_again_with_the_same_request_id(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=500))
    register(host, server.url())
    client = host.app.test_client()
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    detail_url = f"{PREFIX}/deliveries/{delivery_id}"
    wait_until(lambda: client.get(detail_url, headers=ADMIN).get_json()["status"] == "failed")
    assert len(server.received) == 3
    server.responder = lambda request, n: Reply()
    response = client.post(f"{detail_url}/redeliver", headers=ADMIN)
    assert response.status_code == 202
    assert response.get_json() == {"id": delivery_id, "status": "pending"}
    wait_until(lambda: client.get(detail_url, headers=ADMIN).get_json()["status"] == "succeeded")
    ids = {
        json.loads(jose.jws.get_unverified_claims(r.body.decode()))["webhook_request_id"]
        for r in server.received
    }
    assert ids == {delivery_id}
    assert client.get(detail_url, headers=ADMIN).get_json()["attempts"] == 4
    missing = client.post(f"{PREFIX}/deliveries/nope/redeliver", headers=ADMIN)
    assert missing.status_code == 404


def test_redeliver_refuses_a_delivery_whose_attempt_is_under_way(host: Any, receiver: Any) -> None:
    gate = threading.Event()
    server = receiver(lambda request, n: Reply(wait=gate))
    register(host, server.url())
    client = host.app.test_client()
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    server.wait_for(1)
    try:
        response = client.post(f"{PREFIX}/deliveries/{delivery_id}/redeliver", headers=ADMIN)
        assert response.status_code == 409
        assert response.get_json()["error"]["code"] == "delivery_in_flight"
    finally:
        gate.set()
    detail_url = f"{PREFIX}/deliveries/{delivery_id}"
    wait_until(lambda: client.get(detail_url, headers=ADMIN).get_json()["status"] == "succeeded")
    assert len(server.received) == 1  # never sent twice in parallel


def test_redeliver_refuses_deliveries_of_disabled_and_deleted_registrations(
    host: Any, receiver: Any
) -> None:
    server = receiver(lambda request, n: Reply(status=500))
    registration = register(host, server.url())
    client = host.app.test_client()
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    detail_url = f"{PREFIX}/deliveries/{delivery_id}"
    wait_until(lambda: client.get(detail_url, headers=ADMIN).get_json()["status"] == "failed")
    registration_url = f"{PREFIX}/registrations/{registration['id']}"
    disabled = client.put(
        registration_url,
        json={
            "topic": "profile_updated",
            "url": server.url(),
            "state": "disabled",
            "rev": registration["rev"],
        },
        headers=ADMIN,
    )
    assert disabled.status_code == 200
    refused = client.post(f"{detail_url}/redeliver", headers=ADMIN)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "registration_disabled"
    deleted = client.delete(f"{registration_url}?rev={disabled.get_json()['rev']}", headers=ADMIN)
    assert deleted.status_code == 200
    refused = client.post(f"{detail_url}/redeliver", headers=ADMIN)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "registration_deleted"
    assert client.get(detail_url, headers=ADMIN).get_json()["status"] == "failed"
    assert len(server.received) == 3


def test_deleting_a_registration_ends_its_pending_deliveries_not_being_sent(
    make_host: Any, backend: str
) -> None:
    # Nothing sends in this app: its deliveries stay pending until something ends them.
    host = make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    doomed = register(host, "http://127.0.0.1:9/doomed")
    with host.app.app_context():
        [being_sent] = host.webhooks.trigger("profile_updated", {"n": 1})
        [waiting] = host.webhooks.trigger("profile_updated", {"n": 2})
    other = register(host, "http://127.0.0.1:9/other")
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 3})  # to both
        state = get_state()
        now = state.clock.now()
        with state.database.writing() as session:  # a worker is sending this one
            session.execute(
                update(Delivery)
                .where(Delivery.id == being_sent)
                .values(claim_token="worker-1", next_attempt_at=now + timedelta(minutes=5))
            )
    url = f"{PREFIX}/registrations/{doomed['id']}?rev={doomed['rev']}"
    assert host.app.test_client().delete(url, headers=ADMIN).status_code == 200
    with host.app.app_context(), get_state().database.independent_session() as session:
        deliveries = list(session.scalars(select(Delivery)))
    ended = [d for d in deliveries if d.registration_id == doomed["id"] and d.id != being_sent]
    assert waiting in {d.id for d in ended} and len(ended) == 2
    for delivery in ended:
        assert (delivery.status, delivery.last_error, delivery.next_attempt_at) == (
            "failed",
            "the registration was deleted",
            None,
        )
        assert delivery.completed_at is not None
    # The one being sent is left to its worker, which ends it; the other registration's wait.
    [kept] = [d for d in deliveries if d.id == being_sent]
    assert (kept.status, kept.claim_token) == ("pending", "worker-1")
    [others] = [d for d in deliveries if d.registration_id == other["id"]]
    assert others.status == "pending"
