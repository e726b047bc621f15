"""Pulling what was missed: a registration's feed, its deliveries in the order they were made,
each as the signed body it is pushed with, paged with cursors while new ones are made."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import jose.jws
import pytest
from sqlalchemy import text

from tests.conftest import ADMIN, DELIVERY_CONFIG, OTHER_ADMIN, register
from tests.receivers import wait_until

PREFIX = "/v2/webhooks"
SECRET = "signature_secret_0123"


@pytest.fixture(params=["sqlite", "postgres"])
def host(make_host: Any, request: pytest.FixtureRequest) -> Any:
    return make_host(request.param, **DELIVERY_CONFIG)


def test_a_feed_paged_while_deliveries_are_made_gives_each_once_in_order(
    host: Any, receiver: Any
) -> None:
    rid = register(host, receiver().url("/a"), secret=SECRET)["id"]
    made: list[str] = []

    def make() -> None:
        for n in range(40):
            with host.app.app_context():
                made.extend(host.webhooks.trigger("profile_updated", {"n": n}))
            time.sleep(0.02)

    producer = threading.Thread(target=make)
    producer.start()
    client = host.app.test_client()
    read: list[dict[str, Any]] = []
    cursor = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        query = f"?limit=7&after={cursor}" if cursor else "?limit=7"
        answer = client.get(f"{PREFIX}/registrations/{rid}/feed{query}", headers=ADMIN)
        assert answer.status_code == 200, answer.get_json()
        page = answer.get_json()
        read += page["items"]
        cursor = page["next_cursor"] or cursor
        if not producer.is_alive() and len(read) == 40 and not page["has_more"]:
            break
        if not page["has_more"]:
            time.sleep(0.1)  # caught up: ask again a moment later, from the same cursor
    producer.join()
    assert [item["id"] for item in read] == made  # each once, in the order they were made
    for n, item in enumerate(read):
        claims = json.loads(jose.jws.verify(item["body"], SECRET, algorithms=["HS256"]))
        assert claims == {"n": n, "webhook_request_id": item["id"]}  # the body as pushed
        assert item["topic"] == "profile_updated"
    time.sleep(0.3)
    last = client.get(f"{PREFIX}/registrations/{rid}/feed?after={cursor}", headers=ADMIN)
    assert last.get_json() == {"items": [], "next_cursor": cursor, "has_more": False}


def test_a_feed_is_its_owners_and_its_cursor_its_own(host: Any, receiver: Any) -> None:
    server = receiver()
    mine = register(host, server.url("/a"))["id"]
    other = register(host, server.url("/b"), topic="booking_updated")["id"]
    theirs = register(host, server.url("/c"), headers=OTHER_ADMIN)["id"]
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
        host.webhooks.trigger("profile_updated", {"n": 2})
    client = host.app.test_client()
    feed = f"{PREFIX}/registrations/{mine}/feed"
    wait_until(
        lambda: len(client.get(f"{feed}?limit=1", headers=ADMIN).get_json()["items"]) == 1,
        timeout=10,
    )
    cursor = client.get(f"{feed}?limit=1", headers=ADMIN).get_json()["next_cursor"]
    assert client.get(f"{PREFIX}/registrations/{theirs}/feed", headers=ADMIN).status_code == 404
    assert client.get(feed, headers=OTHER_ADMIN).status_code == 404
    elsewhere = client.get(f"{PREFIX}/registrations/{other}/feed?after={cursor}", headers=ADMIN)
    assert elsewhere.status_code == 400
    assert elsewhere.get_json()["error"] == {
        "code": "invalid_cursor",
        "message": "The cursor is invalid.",
        "field": "after",
    }
    assert client.get(f"{feed}?after={cursor}x", headers=ADMIN).status_code == 400
    assert client.get(f"{feed}?limit=0", headers=ADMIN).status_code == 422


def test_a_delivery_of_a_long_host_transaction_never_lands_behind_a_cursor(
    make_host: Any, receiver: Any
) -> None:
    """An event fired in a host transaction that stays open longer than a feed waits for
    deliveries to settle is fanned out when it commits: its delivery comes after every one
    already read, not among them."""
    host = make_host("postgres-hostdb", **DELIVERY_CONFIG)
    rid = register(host, receiver().url("/a"), secret=SECRET)["id"]
    committed = threading.Event()

    def slow_request() -> None:
        with host.app.app_context():
            host.db.session.execute(text("SELECT 1"))  # the host's transaction is open
            host.webhooks.trigger("profile_updated", {"n": "slow"})
            time.sleep(3.0)  # the host's request goes on, its transaction open
            host.db.session.commit()
        committed.set()

    slow = threading.Thread(target=slow_request)
    slow.start()
    time.sleep(0.2)
    with host.app.app_context():
        host.db.session.execute(text("SELECT 1"))
        host.webhooks.trigger("profile_updated", {"n": "fast"})
        host.db.session.commit()
    client = host.app.test_client()
    feed = f"{PREFIX}/registrations/{rid}/feed"

    def page(cursor: str | None) -> dict[str, Any]:
        answer = client.get(f"{feed}?after={cursor}" if cursor else feed, headers=ADMIN)
        return dict(answer.get_json())

    first = wait_until(lambda: page(None)["items"] and page(None), timeout=10)
    assert [claims_of(item)["n"] for item in first["items"]] == ["fast"]
    slow.join()
    assert committed.is_set()
    rest = wait_until(lambda: page(first["next_cursor"])["items"] and page(first["next_cursor"]))
    assert [claims_of(item)["n"] for item in rest["items"]] == ["slow"]


def claims_of(item: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(jose.jws.verify(item["body"], SECRET, algorithms=["HS256"])))
