"""One line at INFO per finished attempt: its delivery, registration, topic, outcome, status,
duration and what follows, for answers of every kind from real receivers on loopback; never a
secret or the payload."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.delivery.outcomes import outcome_of
from flask_kaizen_webhooks.delivery.transfer import SendResult
from flask_kaizen_webhooks.storage import registrations
from tests.conftest import ADMIN, DELIVERY_CONFIG
from tests.receivers import Received, Reply, wait_until
from tests.test_ordering import register

SECRET = "signature_secret_0123"
MARK = "payload-marker-7d1c"


def result(status: int | None, error: str | None = None, timed_out: bool = False) -> SendResult:
    return SendResult(status, 0.01, b"", None, None, error, timed_out)


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (result(200), "success"),
        (result(404), "4xx"),
        (result(503), "5xx"),
        (result(302), "redirect"),
        (result(None, "timed out after 1 s", timed_out=True), "timeout"),
        (result(None, "forbidden destination: 10.0.0.1 is private"), "refused"),
        (result(200, "answer too large: over 65,536 bytes"), "too_large"),
        (result(None, "connection refused"), "connection_error"),
        # A name that does not resolve is the receiver's trouble, not the guard's refusal.
        (
            result(None, "cannot resolve 'hooks.invalid': [Errno -2] Name or service not known"),
            "connection_error",
        ),
    ],
)
def test_each_answer_comes_to_one_outcome(answer: SendResult, outcome: str) -> None:
    assert outcome_of(answer) == outcome


def answering(hang: threading.Event) -> Callable[[Received, int], Reply]:
    """A receiver's answers by path: ``/hang`` until ``hang`` is set, ``/fail`` 500, else 200."""

    def respond(request: Received, _count: int) -> Reply:
        if request.path == "/hang":
            return Reply(wait=hang)
        return Reply(status=500 if request.path == "/fail" else 200)

    return respond


def test_a_line_per_attempt_with_what_it_came_to_and_never_a_secret_or_payload(
    make_host: Any, receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hang = threading.Event()
    respond = answering(hang)

    # Long enough for every answer on a busy machine; the hanging one times out.
    config = {**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 2.0}
    host = make_host("sqlite", **config)
    server = receiver(respond)
    ids = {path: register(host, server.url(path)) for path in ("/ok", "/fail", "/hang")}
    with host.app.app_context():
        state = get_state()
        refused = registrations.create_registration(
            state.database.session,
            owner="org-1",
            topic="profile_updated",
            url="http://127.0.0.2:9/refused",  # loopback, not an allowed network
            sealed_secret=state.secrets.seal(SECRET),
        ).id
        state.database.session.commit()
    caplog.set_level(logging.INFO, logger="flask_kaizen_webhooks")
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"mark": MARK})

    pattern = (
        r"Webhook attempt (\d) of delivery (\S+) \(registration (\S+), topic profile_updated\): "
        r"(\w+), status (\w+), (\d+) ms; (.+)"
    )

    def attempt_lines() -> list[str]:
        messages = (record.getMessage() for record in caplog.records)
        return [message for message in messages if message.startswith("Webhook attempt")]

    def seen() -> dict[str, set[tuple[str, str]]]:
        """What each registration's attempts came to, from the lines logged so far."""
        found: dict[str, set[tuple[str, str]]] = {}
        for line in attempt_lines():
            match = re.fullmatch(pattern, line)
            assert match, line
            found.setdefault(match.group(3), set()).add((match.group(4), match.group(5)))
        return found

    # A delivery counts its attempt when it is claimed, before the answer: wait for the lines.
    wait_until(lambda: len(seen()) == 4, timeout=20)
    lines = attempt_lines()
    outcomes = seen()
    assert outcomes[ids["/ok"]] == {("success", "200")}
    assert outcomes[ids["/fail"]] == {("5xx", "500")}
    assert outcomes[ids["/hang"]] == {("timeout", "none")}
    assert outcomes[refused] == {("refused", "none")}
    assert any(line.endswith("; delivered") for line in lines)
    assert any("; retry at " in line for line in lines)
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in everything and MARK not in everything
    hang.set()


def test_synchronous_attempts_and_tests_have_their_line_too(
    make_host: Any, receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hang = threading.Event()
    respond = answering(hang)

    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_SYNC_TIMEOUT=1.0)
    server = receiver(respond)
    ids = {
        path: register(host, server.url(path), topic="user_logged_in")
        for path in ("/ok", "/fail", "/hang")
    }
    caplog.set_level(logging.INFO, logger="flask_kaizen_webhooks")
    with host.app.app_context():
        answers = host.webhooks.trigger("user_logged_in", {"mark": MARK})
    tested = host.app.test_client().post(
        "/v2/webhooks/test", json={"topic": "user_logged_in"}, headers=ADMIN
    )
    assert tested.status_code == 200, tested.get_json()
    hang.set()
    pattern = (
        r"Webhook attempt 1 of delivery (\S+) \(registration (\S+), topic user_logged_in\): "
        r"(\w+), status (\w+), \d+ ms; (.+)"
    )
    lines = [
        match.groups()
        for record in caplog.records
        if (match := re.fullmatch(pattern, record.getMessage()))
    ]
    delivery_ids = {answer.delivery_id for answer in answers}
    synchronous = {(r, o, s, f) for d, r, o, s, f in lines if d in delivery_ids}
    assert synchronous == {
        (ids["/ok"], "success", "200", "delivered (synchronous)"),
        (ids["/fail"], "5xx", "500", "failed, not retried (synchronous)"),
        (ids["/hang"], "timeout", "none", "failed, not retried (synchronous)"),
    }
    tests = {(r, o, f) for d, r, o, _s, f in lines if d not in delivery_ids}
    assert (ids["/ok"], "success", "delivered (a test)") in tests
    assert len(lines) == 6
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in everything and MARK not in everything
