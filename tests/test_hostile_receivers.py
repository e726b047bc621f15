"""Whatever a receiver answers is untrusted: it never raises into the host, and it never stops
the recording of anyone's attempts."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DataError, InternalError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from flask_kaizen_webhooks import get_state, signals
from flask_kaizen_webhooks.delivery.recorder import Recorder
from flask_kaizen_webhooks.storage.tables import Attempt, Delivery
from tests.conftest import ADMIN, DELIVERY_CONFIG, register
from tests.receivers import Reply, wait_until

JSON = {"Content-Type": "application/json"}


def rows(host: Any) -> list[Delivery]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return list(session.scalars(select(Delivery)))


def all_rows(host: Any, count: int) -> list[Delivery] | None:
    """The deliveries once there are ``count``: synchronous ones are written on the log's
    thread, moments after their answer."""
    found = rows(host)
    return found if len(found) == count else None


def attempt_rows(host: Any) -> list[Attempt]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return list(session.scalars(select(Attempt)))


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000,  # RecursionError in json.loads
        b"[" * 200 + b"]" * 200,  # valid, but deeper than any answer a host should re-encode
        b'{"ok": NaN}',  # not JSON: the host's own JSON answer would carry NaN
        b'{"ok": 1e999}',  # infinity, which JSON cannot carry either
    ],
)
def test_a_receivers_answer_never_raises_into_the_host(
    make_host: Any, receiver: Any, body: bytes
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver(lambda request, number: Reply(body=body, headers=JSON))
    register(host, server.url(), topic="user_logged_in")
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"user_id": "u-1"})
        [(_, [by_signal])] = signals.user_logged_in.send(host.app, payload={"user_id": "u-1"})
    for answered in (result, by_signal):
        assert (answered.ok, answered.status_code, answered.response_json) == (True, 200, None)
        assert answered.to_dict()["response"] is None
    response = host.app.test_client().post(
        "/v2/webhooks/test", json={"topic": "user_logged_in"}, headers=ADMIN
    )
    assert response.status_code == 200, response.get_json()
    [tested] = response.get_json()["deliveries"]
    assert (tested["ok"], tested["response"]) == (True, None)
    assert len(server.received) == 3
    logged = wait_until(lambda: all_rows(host, 3))
    assert sorted(row.mode for row in logged) == ["sync", "sync", "test"]
    assert all(row.status == "succeeded" for row in logged)


def test_a_shallow_json_answer_still_reaches_the_host(make_host: Any, receiver: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    answer = b'{"a": [[{"b": [1, 2]}]], "ok": true}'
    server = receiver(lambda request, number: Reply(body=answer, headers=JSON))
    register(host, server.url(), topic="user_logged_in")
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"user_id": "u-1"})
    assert result.response_json == {"a": [[{"b": [1, 2]}]], "ok": True}


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_nul_byte_in_an_answer_holds_up_no_ones_records(
    make_host: Any, receiver: Any, backend: str
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG)
    poisoned = receiver(lambda request, number: Reply(body=b"ok\x00\xed\xa0\x80 tail"))
    healthy = receiver()
    register(host, poisoned.url(), topic="profile_updated")
    register(host, healthy.url(), topic="profile_updated")
    register(host, poisoned.url(), topic="user_logged_in")
    with host.app.app_context():
        ids = host.webhooks.trigger("profile_updated", {"n": 1})
        [synchronous] = host.webhooks.trigger("user_logged_in", {"user_id": "u-1"})
    assert synchronous.ok and len(ids) == 2

    def all_recorded() -> bool:
        found = rows(host)
        return len(found) == 3 and all(row.status == "succeeded" for row in found)

    wait_until(all_recorded)
    finished = rows(host)
    excerpts = sorted(row.response_excerpt or "" for row in finished)
    assert excerpts.count("ok\ufffd\ufffd\ufffd\ufffd tail") == 2  # the async and the sync one
    assert all("\x00" not in text for text in excerpts)
    assert all("\x00" not in (attempt.response_excerpt or "") for attempt in attempt_rows(host))


class Refused(Exception):
    pass


def test_one_record_the_database_refuses_does_not_hold_up_the_others() -> None:
    written: list[str] = []
    tries: list[list[str]] = []

    def write(batch: Any) -> None:
        tries.append(list(batch))
        if "poison" in batch:
            raise DataError("INSERT ...", {}, Refused("text fields cannot contain NUL"))
        written.extend(batch)

    recorder: Recorder[str] = Recorder(write, name="test-recorder")
    for record in ["a", "poison", "b"]:
        recorder.put(record)
    wait_until(lambda: len(written) == 2 and tries.count(["poison"]) == 3)
    recorder.stop(timeout=10)
    assert written == ["a", "b"]
    assert tries.count(["poison"]) == 3  # tried alone, then dropped


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, Refused("connection refused")),
        InternalError(
            "UPDATE ...", {}, Refused("cannot execute UPDATE in a read-only transaction")
        ),
        ProgrammingError("UPDATE ...", {}, Refused('column "x" does not exist')),
        PoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
    ],
)
def test_records_wait_for_a_database_that_cannot_take_them_yet_and_lose_nothing(
    error: Exception,
) -> None:
    written: list[str] = []
    failures = iter(range(4))  # more tries than a record the database refuses gets
    done = threading.Event()

    def write(batch: Any) -> None:
        if next(failures, None) is not None:
            raise error
        written.extend(batch)
        done.set()

    recorder: Recorder[str] = Recorder(write, name="test-recorder")
    for record in ["a", "b"]:
        recorder.put(record)
    assert done.wait(10)
    recorder.stop(timeout=10)
    assert sorted(written) == ["a", "b"]


def test_a_defect_in_a_fan_out_fails_every_hook_and_never_raises(
    make_host: Any, receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_kaizen_webhooks import DeliveryFailed
    from flask_kaizen_webhooks import state as extension

    host = make_host("sqlite", **DELIVERY_CONFIG)
    register(host, receiver().url(), topic="user_logged_in")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a defect")

    monkeypatch.setattr(extension, "fan_out", broken)
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"user_id": "u-1"})
        assert not result.ok and "internal error" in (result.error or "")
        with pytest.raises(DeliveryFailed):
            host.webhooks.trigger("user_logged_in", {"user_id": "u-1"}, raise_on_error=True)
