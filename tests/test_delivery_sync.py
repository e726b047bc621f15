"""Synchronous topics: signed POSTs to every registration at once, under one deadline."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import jose.jws
import pytest
from sqlalchemy import select

from flask_kaizen_webhooks import DeliveryFailed, get_state, signals
from flask_kaizen_webhooks.delivery.sync import DeliveryResult
from flask_kaizen_webhooks.storage.tables import Attempt, Delivery
from flask_kaizen_webhooks.version import __version__
from tests.conftest import DELIVERY_CONFIG, register
from tests.processes import run_python
from tests.receivers import Reply, wait_until

SECRET = "signature_secret_0123"
LOGIN = {"user_id": "u-1", "sso": {"email": "ann@example.com", "first_name": "Ann"}}


@pytest.fixture
def host(make_host: Any, backend: str) -> Any:
    return make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_SYNC_TIMEOUT=10)


def test_the_seeds_receiver_code_verifies_a_real_delivery(host: Any, receiver: Any) -> None:
    server = receiver()
    registration = register(host, server.url("/login"), topic="user_logged_in", secret=SECRET)
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", LOGIN)
    assert result.ok and result.status_code == 200
    [request] = server.received
    data = request.body.decode()
    # Exactly what the integrator's example does:
    payload_str = jose.jws.verify(data, SECRET, algorithms=["HS256"])
    payload = json.loads(payload_str.decode("utf-8"))
    assert payload == {**LOGIN, "webhook_request_id": result.delivery_id}
    header = jose.jws.get_unverified_header(data)
    assert header["alg"] == "HS256"
    assert abs(header["iat"] - time.time()) < 60
    assert request.headers["Content-Type"] == "application/jose"
    assert request.headers["Webhook-Topic"] == "user_logged_in"
    assert request.headers["Webhook-Id"] == result.delivery_id
    assert request.headers["User-Agent"] == f"flask-kaizen-webhooks/{__version__}"
    assert result.registration_id == registration["id"]
    assert result.response_json == {"ok": True}


def test_fan_out_is_parallel_and_returns_every_answer(host: Any, receiver: Any) -> None:
    # Each receiver answers only once all three requests are in flight together.
    barrier = threading.Barrier(3)
    servers = [
        receiver(lambda request, n, i=i: Reply(body=json.dumps({"n": i}).encode(), barrier=barrier))
        for i in range(3)
    ]
    ids = [register(host, server.url(), topic="user_registered")["id"] for server in servers]
    with host.app.app_context():
        results = host.webhooks.trigger("user_registered", LOGIN)
    assert not barrier.broken
    assert [result.registration_id for result in results] == ids
    assert [result.response_json for result in results] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(result.ok and result.error is None and result.elapsed > 0 for result in results)


def test_a_hanging_receiver_is_cut_off_at_the_deadline(
    make_host: Any, backend: str, receiver: Any
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_SYNC_TIMEOUT=1.5)
    fast = receiver()
    hanging = receiver()
    hanging.responder = lambda request, n: Reply(wait=hanging.release)
    register(host, fast.url(), topic="user_logged_in")
    stuck = register(host, hanging.url(), topic="user_logged_in")
    started = time.monotonic()
    with host.app.app_context():
        results = host.webhooks.trigger("user_logged_in", LOGIN)
    took = time.monotonic() - started
    # The deadline is 1.5 s; the generous bound only guards against waiting for the hang (30 s).
    assert took < 1.5 + 3.0
    by_id = {result.registration_id: result for result in results}
    late = by_id[stuck["id"]]
    assert late.timed_out and not late.ok and late.status_code is None
    assert "timed out" in (late.error or "")
    assert sum(result.ok for result in results) == 1


def test_failures_never_raise_unless_asked(host: Any, receiver: Any, refusing_port: int) -> None:
    failing = receiver(lambda request, n: Reply(status=500, body=b"boom", headers={}))
    register(host, failing.url(), topic="user_logged_in")
    register(host, f"http://127.0.0.1:{refusing_port}/refused", topic="user_logged_in")
    with host.app.app_context():
        results = host.webhooks.trigger("user_logged_in", LOGIN)
        assert sorted((r.status_code or 0, bool(r.error)) for r in results) == [
            (0, True),
            (500, True),
        ]
        assert any("connection" in (r.error or "") for r in results)
        with pytest.raises(DeliveryFailed) as raised:
            host.webhooks.trigger("user_logged_in", LOGIN, raise_on_error=True)
    assert len(raised.value.results) == 2


def test_every_call_is_recorded_in_the_delivery_log(host: Any, receiver: Any) -> None:
    ok = receiver()
    bad = receiver(lambda request, n: Reply(status=503, body=b"down", headers={}))
    register(host, ok.url(), topic="user_logged_in")
    register(host, bad.url(), topic="user_logged_in")
    with host.app.app_context():
        results = host.webhooks.trigger("user_logged_in", LOGIN)
        state = get_state()

        def logged() -> tuple[dict[str, Delivery], dict[str, Attempt]]:
            with state.database.independent_session() as session:
                return (
                    {row.id: row for row in session.scalars(select(Delivery))},
                    {row.delivery_id: row for row in session.scalars(select(Attempt))},
                )

        def complete() -> tuple[dict[str, Delivery], dict[str, Attempt]] | None:
            found = logged()
            return found if len(found[0]) == len(found[1]) == 2 else None

        rows, attempts = wait_until(complete)  # written on the log's thread, moments after
    assert set(rows) == {result.delivery_id for result in results} == set(attempts)
    for result in results:
        row = rows[result.delivery_id]
        assert (row.mode, row.attempts, row.last_status_code) == ("sync", 1, result.status_code)
        assert row.status == ("succeeded" if result.ok else "failed")
        assert json.loads(row.payload)["webhook_request_id"] == result.delivery_id
    assert {row.response_excerpt for row in rows.values()} == {'{"ok": true}', "down"}


def test_the_signal_returns_the_results(host: Any, receiver: Any) -> None:
    server = receiver()
    register(host, server.url(), topic="user_registered")
    with host.app.app_context():
        answers = signals.user_registered.send(host.app, payload=LOGIN)
    [(_, results)] = answers
    assert [type(result) for result in results] == [DeliveryResult]
    assert results[0].ok
    assert len(server.received) == 1


def test_the_signal_may_be_sent_by_current_app(host: Any, receiver: Any) -> None:
    from flask import current_app

    from flask_kaizen_webhooks import WebhooksError

    server = receiver()
    register(host, server.url(), topic="user_registered")
    with host.app.app_context():
        [(_, results)] = signals.user_registered.send(current_app, payload=LOGIN)
    assert [result.ok for result in results] == [True]
    assert len(server.received) == 1
    with pytest.raises(WebhooksError, match="outside an application context"):
        signals.user_registered.send(current_app, payload=LOGIN)


def test_no_registrations_means_no_requests(host: Any) -> None:
    with host.app.app_context():
        assert host.webhooks.trigger("user_logged_in", LOGIN) == []


def test_bad_payloads_are_clear_errors(host: Any) -> None:
    from flask_kaizen_webhooks import UnknownTopic, WebhooksError

    with host.app.app_context():
        with pytest.raises(UnknownTopic, match="profile_uploaded"):
            host.webhooks.trigger("profile_uploaded", {})
        with pytest.raises(WebhooksError, match="JSON"):
            host.webhooks.trigger("user_logged_in", {"when": object()})
        with pytest.raises(WebhooksError, match="webhook_request_id"):
            host.webhooks.trigger("user_logged_in", {"webhook_request_id": "x"})
        nested: list[Any] = []
        for _ in range(5_000):
            nested = [nested]
        with pytest.raises(WebhooksError, match="JSON"):
            host.webhooks.trigger("user_logged_in", {"deep": nested})
        with pytest.raises(WebhooksError, match="mapping"):
            host.webhooks.trigger("user_logged_in", ["not", "a", "mapping"])  # type: ignore[arg-type]
        with pytest.raises(WebhooksError, match="sender"):
            signals.user_logged_in.send("not-the-app", payload=LOGIN)


def test_payload_size_is_limited(make_host: Any) -> None:
    from flask_kaizen_webhooks import WebhooksError

    host = make_host("sqlite", KAIZEN_WEBHOOKS_MAX_PAYLOAD_BYTES=100)
    with host.app.app_context():
        with pytest.raises(WebhooksError, match="MAX_PAYLOAD_BYTES"):
            host.webhooks.trigger("profile_updated", {"bio": "x" * 200})
        assert host.webhooks.trigger("profile_updated", {"bio": "short"}) == []


def test_a_shutdown_writes_the_delivery_log_still_queued(host: Any, receiver: Any) -> None:
    register(host, receiver().url(), topic="user_logged_in")
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", LOGIN)
        host.webhooks.shutdown(host.app)
        with get_state().database.independent_session() as session:
            logged = session.get(Delivery, result.delivery_id)
    assert logged is not None and logged.status == "succeeded"


def test_a_process_that_exits_right_after_a_login_still_writes_its_delivery_log(
    tmp_path: Path, receiver: Any
) -> None:
    """A real process: it sends a synchronous topic and exits at once, without a shutdown."""
    server = receiver()
    database = tmp_path / "exit.db"
    code = f"""
from flask import Flask
from flask_kaizen_webhooks import KaizenWebhooks, get_state
from flask_kaizen_webhooks.storage import registrations
app = Flask("exiting")
app.config.update(
    SECRET_KEY="exit-secret-key", KAIZEN_WEBHOOKS_DATABASE_URI="sqlite:///{database}",
    KAIZEN_WEBHOOKS_ALLOW_HTTP=True, KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.1/32"],
    KAIZEN_WEBHOOKS_AUTOSTART=False,
)
webhooks = KaizenWebhooks(app)
with app.app_context():
    state = get_state()
    with state.database.writing() as session:
        registrations.create_registration(
            session, owner="o", topic="user_logged_in", url={server.url()!r},
            sealed_secret=state.secrets.seal("signature_secret_0123"),
        )
    [result] = webhooks.trigger("user_logged_in", {{"user_id": "u-1"}})
    print(result.delivery_id, result.ok)
"""
    delivery_id, ok = run_python(code).split()
    assert ok == "True"
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT status FROM kaizen_webhook_deliveries WHERE id = ?", (delivery_id,)
        ).fetchall()
    assert rows == [("succeeded",)]
