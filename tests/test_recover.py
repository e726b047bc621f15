"""Recovering after a receiver was down: a registration's failed (or all finished) deliveries of
a time window queued again with their ids, through the API and the command line."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jose.jws
import pytest
from sqlalchemy import select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage.tables import Delivery, Registration
from tests.conftest import ADMIN, DELIVERY_CONFIG, OTHER_ADMIN, register
from tests.receivers import Reply, wait_until

PREFIX = "/v2/webhooks"


@pytest.fixture(params=["sqlite", "postgres"])
def host(make_host: Any, request: pytest.FixtureRequest) -> Any:
    return make_host(request.param, **DELIVERY_CONFIG)


def statuses(host: Any) -> dict[str, str]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return {row.id: row.status for row in session.scalars(select(Delivery))}


def request_ids(server: Any) -> list[str]:
    """The webhook_request_id of each request the receiver got, in order."""
    return [
        json.loads(jose.jws.get_unverified_claims(request.body.decode()))["webhook_request_id"]
        for request in server.received
    ]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_a_receiver_back_from_downtime_gets_each_missed_delivery_once_more_with_its_id(
    host: Any, receiver: Any
) -> None:
    down = False
    server = receiver(lambda request, n: Reply(status=503) if down else Reply())
    rid = register(host, server.url("/a"))["id"]
    started = datetime.now(UTC) - timedelta(seconds=1)
    with host.app.app_context():
        before = [host.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(2)]
    wait_until(lambda: set(statuses(host).values()) == {"succeeded"})
    down = True
    with host.app.app_context():
        missed = [host.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(2, 7)]
    wait_until(lambda: [statuses(host)[i] for i in missed] == ["failed"] * 5)
    down = False
    received = len(server.received)

    client = host.app.test_client()
    answer = client.post(
        f"{PREFIX}/registrations/{rid}/recover", json={"since": iso(started)}, headers=ADMIN
    )
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["queued"] == 5
    wait_until(lambda: len(server.received) >= received + 5)
    wait_until(lambda: set(statuses(host).values()) == {"succeeded"})
    time.sleep(0.3)  # nothing more comes
    again = request_ids(server)[received:]
    assert sorted(again) == sorted(missed)  # each missed one once more, with its own id
    assert not set(again) & set(before)  # the ones that arrived are not sent again

    everything = client.post(
        f"{PREFIX}/registrations/{rid}/recover",
        json={"since": iso(started), "status": "all"},
        headers=ADMIN,
    )
    assert everything.get_json()["queued"] == 7
    wait_until(lambda: len(server.received) >= received + 12)
    assert sorted(request_ids(server)[received + 5 :]) == sorted(before + missed)


def test_a_window_outside_what_is_kept_or_backwards_is_refused_by_field(
    host: Any, receiver: Any
) -> None:
    rid = register(host, receiver().url("/a"))["id"]
    client = host.app.test_client()
    now = datetime.now(UTC)
    path = f"{PREFIX}/registrations/{rid}/recover"
    for body, code, field in (
        ({}, "missing_field", "since"),
        ({"since": "yesterday"}, "invalid_time", "since"),
        ({"since": iso(now - timedelta(hours=1)), "until": "soon"}, "invalid_time", "until"),
        (
            {"since": iso(now - timedelta(hours=1)), "until": iso(now - timedelta(hours=2))},
            "invalid_window",
            "until",
        ),
        ({"since": iso(now - timedelta(days=31))}, "invalid_window", "since"),
        ({"since": iso(now + timedelta(hours=1))}, "invalid_window", "since"),
        ({"since": iso(now), "status": "succeeded"}, "invalid_status", "status"),
        ({"since": iso(now), "from": "x"}, "unknown_field", "from"),
    ):
        answer = client.post(path, json=body, headers=ADMIN)
        assert answer.status_code == 422, body
        error = answer.get_json()["error"]
        assert (error["code"], error["field"]) == (code, field), error

    since = {"since": iso(now - timedelta(minutes=5))}
    assert client.post(path, json=since, headers=OTHER_ADMIN).status_code == 404
    with host.app.app_context():
        state = get_state()
        registration = state.database.session.get(Registration, rid)
        assert registration is not None
        rev = registration.rev
        state.database.session.rollback()
    client.put(
        f"{PREFIX}/registrations/{rid}",
        json={"topic": "profile_updated", "url": receiver().url("/b"), "state": "disabled"},
        headers={**ADMIN, "If-Match": rev},
    )
    disabled = client.post(path, json=since, headers=ADMIN)
    assert disabled.status_code == 409
    assert disabled.get_json()["error"]["code"] == "registration_disabled"


def test_operators_recover_from_the_command_line(host: Any, receiver: Any) -> None:
    failing = True
    server = receiver(lambda request, n: Reply(status=500) if failing else Reply())
    rid = register(host, server.url("/a"))["id"]
    with host.app.app_context():
        ids = [host.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(3)]
    wait_until(lambda: [statuses(host)[i] for i in ids] == ["failed"] * 3)
    failing = False
    runner = host.app.test_cli_runner()
    done = runner.invoke(args=["webhooks", "recover", rid, "--since", "1h"])
    assert done.exit_code == 0, done.output
    assert "Queued 3 deliveries again." in done.output
    wait_until(lambda: set(statuses(host).values()) == {"succeeded"})

    nothing = runner.invoke(args=["webhooks", "recover", rid, "--since", "1h"])
    assert "Queued 0 deliveries again." in nothing.output  # none failed any more
    everything = runner.invoke(args=["webhooks", "recover", rid, "--since", "1h", "--all"])
    assert "Queued 3 deliveries again." in everything.output
    for args, says in (
        (["no-such-id", "--since", "1h"], "No registration with id no-such-id"),
        ([rid, "--since", "60d"], "further back than deliveries are kept"),
        ([rid, "--since", "1h", "--until", "2h"], "'until' must come after 'since'"),
        ([rid, "--since", "whenever"], "neither an ISO time nor a duration"),
    ):
        refused = runner.invoke(args=["webhooks", "recover", *args])
        assert refused.exit_code != 0
        assert says in refused.output, refused.output


def test_tests_are_neither_recovered_nor_in_the_feed(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=500))
    rid = register(host, server.url("/a"))["id"]
    client = host.app.test_client()
    since = iso(datetime.now(UTC) - timedelta(minutes=1))
    tested = client.post(f"{PREFIX}/test", json={"topic": "profile_updated"}, headers=ADMIN)
    assert tested.get_json()["deliveries"][0]["ok"] is False
    wait_until(lambda: list(statuses(host).values()) == ["failed"])  # the test's log is written
    time.sleep(2.1)  # past the feed's settling time
    answer = client.post(
        f"{PREFIX}/registrations/{rid}/recover",
        json={"since": since, "status": "all"},
        headers=ADMIN,
    )
    assert answer.get_json()["queued"] == 0
    feed = client.get(f"{PREFIX}/registrations/{rid}/feed", headers=ADMIN).get_json()
    assert feed["items"] == []
