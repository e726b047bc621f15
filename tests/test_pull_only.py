"""Pull-only registrations: made with ``"url": null``, never pushed to, every event of their
topic stored for their feed (kept for the retention, then purged), nothing of them sent again."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.receiver import verify
from flask_kaizen_webhooks.storage import claims, outbox
from flask_kaizen_webhooks.storage.tables import Attempt, Delivery, Registration
from tests.conftest import ADMIN, DELIVERY_CONFIG, OTHER_ADMIN, FrozenClock, register
from tests.receivers import Reply, wait_until

PREFIX = "/v2/webhooks"
PORTAL = f"{PREFIX}/portal"
SECRET = "pull_only_secret_0123"


@pytest.fixture(params=["sqlite", "postgres"])
def host(make_host: Any, request: pytest.FixtureRequest) -> Any:
    return make_host(request.param, **DELIVERY_CONFIG)


def pull_only(host: Any, topic: str = "profile_updated", headers: dict[str, str] = ADMIN) -> str:
    """Register a pull-only registration through the API; its id."""
    made = host.app.test_client().post(
        f"{PREFIX}/registrations",
        json={"topic": topic, "url": None, "secret": SECRET},
        headers=headers,
    )
    assert made.status_code == 201, made.get_json()
    return str(made.get_json()["id"])


def deliveries(host: Any) -> dict[str, Delivery]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        rows = session.scalars(select(Delivery)).all()
        session.expunge_all()
        return {row.id: row for row in rows}


def attempts_of(host: Any, delivery_id: str) -> int:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return len(session.scalars(select(Attempt).where(Attempt.delivery_id == delivery_id)).all())


def feed(host: Any, registration_id: str) -> list[dict[str, Any]]:
    answer = host.app.test_client().get(
        f"{PREFIX}/registrations/{registration_id}/feed", headers=ADMIN
    )
    assert answer.status_code == 200, answer.get_json()
    return list(answer.get_json()["items"])


def current_rev(host: Any, registration_id: str) -> str:
    answer = host.app.test_client().get(f"{PREFIX}/registrations/{registration_id}", headers=ADMIN)
    return str(answer.get_json()["rev"])


def put(host: Any, registration_id: str, **document: Any) -> Any:
    body = {"topic": "profile_updated", "rev": current_rev(host, registration_id), **document}
    return host.app.test_client().put(
        f"{PREFIX}/registrations/{registration_id}", json=body, headers=ADMIN
    )


def assert_stored(delivery: Delivery) -> None:
    assert delivery.status == "stored"
    assert delivery.completed_at is not None
    assert delivery.next_attempt_at is None and delivery.claim_token is None
    assert delivery.attempts == 0


# Registering -------------------------------------------------------------------------------------


def test_a_registration_with_a_null_url_is_pull_only_and_needs_the_field(host: Any) -> None:
    rid = pull_only(host)
    client = host.app.test_client()
    shown = client.get(f"{PREFIX}/registrations/{rid}", headers=ADMIN).get_json()
    assert shown["url"] is None and shown["state"] == "active"
    listed = client.get(f"{PREFIX}/registrations", headers=ADMIN).get_json()["items"]
    assert [item["url"] for item in listed] == [None]
    missing = client.post(
        f"{PREFIX}/registrations",
        json={"topic": "booking_updated", "secret": SECRET},
        headers=ADMIN,
    )
    assert missing.status_code == 422
    assert (missing.get_json()["error"]["code"], missing.get_json()["error"]["field"]) == (
        "missing_field",
        "url",
    )
    listed_by_cli = host.app.test_cli_runner().invoke(args=["webhooks", "list"]).output
    assert "pull-only (feed)" in listed_by_cli and "None" not in listed_by_cli


def test_one_pull_only_registration_per_owner_and_topic(host: Any, receiver: Any) -> None:
    first = pull_only(host)
    again = host.app.test_client().post(
        f"{PREFIX}/registrations",
        json={"topic": "profile_updated", "url": None, "secret": SECRET},
        headers=ADMIN,
    )
    assert again.status_code == 409
    error = again.get_json()["error"]
    assert error["code"] == "duplicate_registration" and error["existing_id"] == first
    assert "pull-only" in error["message"]
    pull_only(host, topic="booking_updated")  # another topic
    pull_only(host, headers=OTHER_ADMIN)  # another owner
    pushed = register(host, receiver().url("/a"))["id"]
    made_pull_only = put(host, pushed, url=None)  # a second pull-only one, by a change
    assert made_pull_only.status_code == 409
    assert made_pull_only.get_json()["error"]["existing_id"] == first


# Events ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "sqlite-hostdb", "postgres-hostdb"])
def test_an_event_makes_a_stored_delivery_for_it_and_pending_ones_for_the_others(
    make_host: Any, backend: str
) -> None:
    """Written at once (with the embedded database), or fanned out from the event's one row
    in the host's transaction: the pull-only recipient's delivery is stored when made."""
    host = make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    kept = pull_only(host)
    pushed = register(host, "http://127.0.0.1:9/a")["id"]
    with host.app.app_context():
        if host.db is not None:
            host.db.session.execute(text("SELECT 1"))  # inside the host's transaction
        ids = host.webhooks.trigger("profile_updated", {"n": 1})
        if host.db is not None:
            host.db.session.commit()
            assert deliveries(host) == {}  # one event row, for now
            with get_state().database.writing() as session:
                outbox.expand_events(session, now=datetime.now(UTC))
    made = deliveries(host)
    assert sorted(made) == sorted(ids)
    [stored] = [row for row in made.values() if row.registration_id == kept]
    [pending] = [row for row in made.values() if row.registration_id == pushed]
    assert_stored(stored)
    assert pending.status == "pending" and pending.next_attempt_at is not None


def test_an_async_event_is_pushed_to_urls_and_kept_in_a_pull_only_feed(
    host: Any, receiver: Any
) -> None:
    server = receiver()
    kept = pull_only(host)
    pushed = register(host, server.url("/a"))["id"]
    with host.app.app_context():
        ids = host.webhooks.trigger("profile_updated", {"id": "p-1"})
    [request] = server.wait_for(1)  # the fan-out ran: the registration with a URL got its own
    made = deliveries(host)
    [stored_id] = [i for i in ids if made[i].registration_id == kept]
    assert_stored(made[stored_id])
    wait_until(lambda: deliveries(host)[request.headers["Webhook-Id"]].status == "succeeded")
    assert made[request.headers["Webhook-Id"]].registration_id == pushed
    [item] = wait_until(lambda: feed(host, kept))
    assert (item["id"], item["status"], item["topic"]) == (stored_id, "stored", "profile_updated")
    assert verify(item["body"], SECRET) == {"id": "p-1", "webhook_request_id": stored_id}
    listed = host.app.test_client().get(f"{PREFIX}/registrations/{kept}/deliveries", headers=ADMIN)
    [shown] = listed.get_json()["items"]
    assert (shown["status"], shown["next_attempt_at"], shown["attempts"]) == ("stored", None, 0)
    time.sleep(0.3)  # polls of the engine meanwhile
    assert len(server.received) == 1
    assert attempts_of(host, stored_id) == 0
    assert deliveries(host)[stored_id].status == "stored"


def test_a_synchronous_call_neither_waits_for_nor_reports_a_pull_only_registration(
    host: Any, receiver: Any
) -> None:
    kept = pull_only(host, topic="user_logged_in")
    with host.app.app_context():
        started = time.monotonic()
        results = host.webhooks.trigger("user_logged_in", {"user_id": "u-1"}, raise_on_error=True)
        assert results == []
        assert time.monotonic() - started < 3.0  # not the 5 s of a synchronous attempt
    server = receiver()
    pushed = register(host, server.url("/login"), topic="user_logged_in")["id"]
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"user_id": "u-2"}, raise_on_error=True)
    assert result.ok and result.registration_id == pushed
    assert len(server.received) == 1
    items = wait_until(lambda: len(feed(host, kept)) == 2 and feed(host, kept))
    assert [verify(item["body"], SECRET)["user_id"] for item in items] == ["u-1", "u-2"]
    assert {item["status"] for item in items} == {"stored"}
    for item in items:
        stored = deliveries(host)[item["id"]]
        assert_stored(stored)
        assert stored.mode == "sync"


def test_the_recorder_lists_a_pull_only_registration_without_a_url(host: Any) -> None:
    kept = pull_only(host)
    pull_only(host, topic="user_logged_in")
    with host.app.app_context(), host.webhooks.recording(host.app) as sent:
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
        assert host.webhooks.trigger("user_logged_in", {"user_id": "u-1"}) == []
    first = sent[0]
    assert (first.registration_id, first.url, first.delivery_id) == (kept, None, delivery_id)
    assert [webhook.topic for webhook in sent] == ["profile_updated", "user_logged_in"]


# Retention -------------------------------------------------------------------------------------


def test_stored_deliveries_are_purged_after_the_retention(host: Any) -> None:
    kept = pull_only(host)
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    state = get_state(host.app)
    runner = host.app.test_cli_runner()
    stats = runner.invoke(args=["webhooks", "stats"]).output
    assert re.search(r"^TOPIC\s+PENDING\s+SUCCEEDED\s+FAILED\s+STORED$", stats, re.MULTILINE)
    assert re.search(r"^profile_updated\s+0\s+0\s+0\s+1$", stats, re.MULTILINE), stats
    assert "stored" in runner.invoke(args=["webhooks", "deliveries", "--status", "stored"]).output
    running_clock = state.clock
    try:
        state.clock = FrozenClock(time.time() + 29 * 86400)
        assert "Deleted 0 deliveries" in runner.invoke(args=["webhooks", "purge"]).output
        assert [item["id"] for item in feed(host, kept)] == [delivery_id]  # kept until then
        state.clock = FrozenClock(time.time() + 31 * 86400)
        purged = runner.invoke(args=["webhooks", "purge"]).output
        assert purged.startswith("Deleted 1 delivery and 0 attempts"), purged
    finally:
        state.clock = running_clock
    assert deliveries(host) == {}
    assert feed(host, kept) == []


# Nothing sent again ----------------------------------------------------------------------------


def test_redelivering_or_recovering_a_pull_only_registration_is_a_precise_409(
    host: Any, receiver: Any
) -> None:
    kept = pull_only(host)
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    client = host.app.test_client()
    redelivered = client.post(f"{PREFIX}/deliveries/{delivery_id}/redeliver", headers=ADMIN)
    assert redelivered.status_code == 409
    assert redelivered.get_json()["error"]["code"] == "pull_only"
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    recovered = client.post(
        f"{PREFIX}/registrations/{kept}/recover",
        json={"since": since, "status": "all"},
        headers=ADMIN,
    )
    assert recovered.status_code == 409
    assert recovered.get_json()["error"]["code"] == "pull_only"
    runner = host.app.test_cli_runner()
    by_cli = runner.invoke(args=["webhooks", "redeliver", delivery_id])
    assert "Queued 0 deliveries again." in by_cli.output
    assert "Left 1 alone: its registration is pull-only" in by_cli.output
    refused = runner.invoke(args=["webhooks", "recover", kept, "--since", "1h", "--all"])
    assert refused.exit_code != 0 and "pull-only" in refused.output
    assert_stored(deliveries(host)[delivery_id])

    # A push registration's failed delivery is not sent again once it is made pull-only.
    server = receiver(lambda request, n: Reply(status=500))
    failing = register(host, server.url("/a"), topic="booking_updated")["id"]
    with host.app.app_context():
        [failed_id] = host.webhooks.trigger("booking_updated", {"n": 2})
    wait_until(lambda: deliveries(host)[failed_id].status == "failed")
    assert put(host, failing, topic="booking_updated", url=None).status_code == 200
    again = client.post(f"{PREFIX}/deliveries/{failed_id}/redeliver", headers=ADMIN)
    assert (again.status_code, again.get_json()["error"]["code"]) == (409, "pull_only")
    assert "pull-only" in runner.invoke(args=["webhooks", "redeliver", "--failed"]).output
    assert deliveries(host)[failed_id].status == "failed"


def test_a_test_of_a_pull_only_registration_is_stored_in_its_feed(host: Any, receiver: Any) -> None:
    server = receiver()
    kept = pull_only(host)
    pushed = register(host, server.url("/a"))["id"]
    client = host.app.test_client()
    tested = client.post(f"{PREFIX}/test", json={"topic": "profile_updated"}, headers=ADMIN)
    assert tested.status_code == 200, tested.get_json()
    results = {result["registration_id"]: result for result in tested.get_json()["deliveries"]}
    assert results[pushed]["stored"] is False and results[pushed]["status_code"] == 200
    stored = results[kept]
    assert (stored["stored"], stored["ok"], stored["status_code"]) == (True, True, None)
    assert len(server.received) == 1
    delivery = deliveries(host)[stored["delivery_id"]]
    assert_stored(delivery)
    assert delivery.mode == "test"
    [item] = wait_until(lambda: feed(host, kept))  # its receiver sees what an event looks like
    assert item["id"] == stored["delivery_id"]
    assert verify(item["body"], SECRET)["webhook_request_id"] == item["id"]
    assert feed(host, pushed) == []  # a test that was sent stays out of a feed
    by_cli = host.app.test_cli_runner().invoke(
        args=["webhooks", "test", "profile_updated", "--registration", kept]
    )
    assert by_cli.exit_code == 0 and "stored" in by_cli.output


# Switching ------------------------------------------------------------------------------------


def test_given_a_url_a_pull_only_registration_is_pushed_new_events(
    host: Any, receiver: Any
) -> None:
    server = receiver()
    rid = pull_only(host)
    with host.app.app_context():
        [before] = host.webhooks.trigger("profile_updated", {"n": 1})
    assert put(host, rid, url=server.url("/now")).status_code == 200
    with host.app.app_context():
        [after] = host.webhooks.trigger("profile_updated", {"n": 2})
    [request] = server.wait_for(1)
    assert request.headers["Webhook-Id"] == after
    assert verify(request.body, SECRET)["n"] == 2
    wait_until(lambda: deliveries(host)[after].status == "succeeded")
    time.sleep(0.2)
    assert len(server.received) == 1  # what was stored is not sent
    assert_stored(deliveries(host)[before])
    shown = host.app.test_client().get(f"{PREFIX}/registrations/{rid}", headers=ADMIN).get_json()
    assert shown["url"] == server.url("/now")


def test_made_pull_only_a_registration_stores_what_waited_to_be_sent(make_host: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    rid = register(host, "http://127.0.0.1:9/a")["id"]
    with host.app.app_context():
        [waiting] = host.webhooks.trigger("profile_updated", {"n": 1})
    assert deliveries(host)[waiting].status == "pending"
    assert put(host, rid, url=None).status_code == 200
    assert_stored(deliveries(host)[waiting])
    assert [item["id"] for item in wait_until(lambda: feed(host, rid))] == [waiting]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_claimed_delivery_of_a_registration_made_pull_only_is_stored_not_sent(
    make_host: Any, backend: str
) -> None:
    """Made pull-only behind the API's back (as a change racing the claim would be): the claim
    stores the delivery rather than handing it to a sender."""
    host = make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    rid = register(host, "http://127.0.0.1:9/a")["id"]
    with host.app.app_context():
        [waiting] = host.webhooks.trigger("profile_updated", {"n": 1})
        database = get_state().database
        with database.writing() as session:
            session.execute(update(Registration).where(Registration.id == rid).values(url=None))
        now = datetime.now(UTC)
        with database.writing() as session:
            taken = claims.claim_due(
                session, now=now, lease_until=now + timedelta(minutes=1), token="t-1", limit=10
            )
    assert taken == []
    assert_stored(deliveries(host)[waiting])


# The portal ------------------------------------------------------------------------------------


def test_the_portal_shows_a_pull_only_endpoint_and_its_stored_deliveries(
    host: Any, receiver: Any
) -> None:
    server = receiver()
    kept = pull_only(host)
    register(host, server.url("/a"))
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
    [delivery_id] = [i for i, row in deliveries(host).items() if row.registration_id == kept]
    client = host.app.test_client()
    link = client.post(f"{PREFIX}/portal-links", headers=ADMIN).get_json()["url"]
    assert client.get(link.removeprefix("http://localhost")).status_code == 200
    endpoints = client.get(f"{PORTAL}/")
    assert endpoints.status_code == 200
    assert "pull-only (feed)" in endpoints.text and server.url("/a") in endpoints.text
    assert ">None<" not in endpoints.text
    endpoint = client.get(f"{PORTAL}/endpoints/{kept}")
    assert endpoint.status_code == 200
    assert f"{PREFIX}/registrations/{kept}/feed" in endpoint.text
    assert "badge-stored" in endpoint.text and "None" not in endpoint.text
    delivery = client.get(f"{PORTAL}/deliveries/{delivery_id}")
    assert delivery.status_code == 200
    assert "kept in the feed" in delivery.text and "Redeliver" not in delivery.text
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', endpoint.text)
    assert token is not None
    tested = client.post(f"{PORTAL}/endpoints/{kept}/test", data={"csrf_token": token[1]})
    assert tested.status_code == 200
    assert "Stored in the endpoint's feed" in tested.text
    server.wait_for(1)
    time.sleep(0.2)
    assert len(server.received) == 1  # the event's push only: the test went nowhere


def test_an_attempt_under_way_when_made_pull_only_never_disables_it(
    host: Any, receiver: Any
) -> None:
    """The receiver answers 410 to the attempt that was under way when the registration was
    made pull-only: the registration stays active, and its feed keeps filling."""
    import threading

    gate = threading.Event()
    server = receiver(lambda request, n: Reply(status=410, wait=gate))
    registration = register(host, server.url("/gone"))
    rid = registration["id"]
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
    wait_until(lambda: len(server.received) == 1)  # the attempt is under way
    assert put(host, rid, topic="profile_updated", url=None).status_code == 200
    gate.set()
    wait_until(lambda: attempts_of(host, next(iter(deliveries(host)))) == 1)
    time.sleep(0.2)
    shown = host.app.test_client().get(f"{PREFIX}/registrations/{rid}", headers=ADMIN).get_json()
    assert (shown["state"], shown["disabled_reason"]) == ("active", None)
    with host.app.app_context():
        [later] = host.webhooks.trigger("profile_updated", {"n": 2})
    assert deliveries(host)[later].status == "stored"


def test_a_synchronous_event_is_in_a_pull_only_feed_when_the_call_returns(host: Any) -> None:
    """Its only copy: written before the host goes on, never left to the log's thread (which
    may lag, or drop logs while the database is away)."""
    pulled = pull_only(host, topic="user_logged_in")
    with host.app.app_context():
        assert host.webhooks.trigger("user_logged_in", {"user_id": "u-1"}) == []
    stored = [d for d in deliveries(host).values() if d.registration_id == pulled]
    assert len(stored) == 1 and stored[0].status == "stored"
