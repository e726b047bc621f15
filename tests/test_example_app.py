"""The demo host app and the example receiver, end to end over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jose.jws
import pytest
import requests
from flask import Flask, request

from example_app import create_app
from example_app.receiver import create_receiver
from flask_kaizen_webhooks import get_state
from tests.receivers import wait_until

ADMIN = {"Authorization": "Bearer admin-token"}
USER = {"Authorization": "Bearer user-token"}
SECRET = "signature_secret_demo"
SSO = {
    "X-SSO-Email": "ann@example.com",
    "X-SSO-First-Name": "Ann",
    "X-SSO-Last-Name": "Lee",
    "X-SSO-Employee-Number": "42",
}


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Flask]:
    app = create_app(
        {"TESTING": True, "KAIZEN_WEBHOOKS_POLL_INTERVAL": 0.05}, instance_path=str(tmp_path)
    )
    yield app
    get_state(app).shutdown()


def register_all(client: Any, url: str, topics: list[str]) -> None:
    for topic in topics:
        body = {"topic": topic, "url": f"{url}/{topic}", "secret": SECRET}
        response = client.post("/v2/webhooks/registrations", json=body, headers=ADMIN)
        assert response.status_code == 201, response.get_json()


class Capture:
    """A receiver app that keeps what it verified."""

    def __init__(self, serve: Any) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        app = Flask("capture")

        @app.post("/<topic>")
        def receive(topic: str) -> dict[str, bool]:
            payload = jose.jws.verify(request.get_data().decode(), SECRET, algorithms=["HS256"])
            self.seen.append((topic, json.loads(payload)))
            return {"ok": True}

        self.url = serve(app).url

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.seen if name == topic]


def test_demo_tokens_and_embedded_sqlite(demo: Flask, tmp_path: Path) -> None:
    client = demo.test_client()
    body = {"topic": "profile_updated", "url": "http://127.0.0.1:6785/p", "secret": SECRET}
    assert client.post("/v2/webhooks/registrations", json=body, headers=ADMIN).status_code == 201
    assert client.get("/v2/webhooks/registrations", headers=USER).status_code == 403
    assert client.get("/v2/webhooks/registrations").status_code == 401
    assert (tmp_path / "example_app.sqlite3").is_file()


def test_sso_login_registers_then_logs_in_through_sync_hooks(demo: Flask, serve: Any) -> None:
    capture = Capture(serve)
    client = demo.test_client()
    register_all(client, capture.url, ["user_registered", "user_logged_in"])
    first = client.post("/sso/login", headers=SSO)
    assert first.status_code == 200
    body = first.get_json()
    user_id = body["user"]["id"]
    assert [r["ok"] for r in body["hooks"]["user_registered"]] == [True]
    assert [r["ok"] for r in body["hooks"]["user_logged_in"]] == [True]
    sso = {
        "email": "ann@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "employee_number": "42",
    }
    [registered] = capture.of("user_registered")
    assert {k: v for k, v in registered.items() if k != "webhook_request_id"} == {
        "user_id": user_id,
        "sso": sso,
    }
    # The second login is not a registration.
    second = client.post("/sso/login", headers=SSO).get_json()
    assert set(second["hooks"]) == {"user_logged_in"}
    assert len(capture.of("user_logged_in")) == 2
    assert len(capture.of("user_registered")) == 1
    missing = client.post("/sso/login")
    assert missing.status_code == 422
    assert missing.get_json()["error"]["field"] == "X-SSO-Email"


def test_profile_and_booking_changes_send_async_hooks(demo: Flask, serve: Any) -> None:
    capture = Capture(serve)
    client = demo.test_client()
    register_all(
        client, capture.url, ["profile_updated", "booking_updated", "booking_state_changed"]
    )
    user_id = client.post("/sso/login", headers=SSO).get_json()["user"]["id"]
    saved = client.put(f"/v2/profiles/{user_id}", json={"lastName": "Smith"}, headers=ADMIN)
    assert saved.status_code == 200
    profile = saved.get_json()
    assert set(profile) == {"auditLog", "id", "email", "rev", "firstName", "lastName", "userFields"}
    assert profile["rev"].startswith("2-")
    created = client.put("/v2/bookings/b-1", json={"title": "OSCE"}, headers=ADMIN)
    assert created.status_code == 201
    unchanged = client.put("/v2/bookings/b-1", json={}, headers=ADMIN)
    assert unchanged.status_code == 200
    approve = client.post(
        "/v2/bookings/b-1/transitions", json={"transition": "approve"}, headers=ADMIN
    )
    assert approve.get_json()["transition"] == {
        "name": "approve",
        "from": "requested",
        "to": "approved",
    }
    comment = client.post(
        "/v2/bookings/b-1/transitions",
        json={"transition": "comment", "comment": "see you"},
        headers=ADMIN,
    )
    assert comment.get_json()["transition"]["to"] == "approved"
    wait_until(lambda: len(capture.seen) == 5)
    [updated] = capture.of("profile_updated")
    assert {k: v for k, v in updated.items() if k != "webhook_request_id"} == profile
    assert len(capture.of("booking_updated")) == 2  # saved twice, even without changes
    changes = capture.of("booking_state_changed")
    assert [
        c["transition"]["name"] for c in sorted(changes, key=lambda c: c["booking"]["rev"])
    ] == ["approve", "comment"]
    assert all(c["actions"] for c in changes)


def test_host_endpoints_answer_bad_input_with_json_errors(demo: Flask) -> None:
    client = demo.test_client()
    client.put("/v2/bookings/b-1", json={"title": "x"}, headers=ADMIN)
    cases = [
        (
            client.post("/v2/bookings/b-1/transitions", json={"transition": "fly"}, headers=ADMIN),
            422,
            "unknown_transition",
        ),
        (
            client.post(
                "/v2/bookings/b-1/transitions", json={"transition": "complete"}, headers=ADMIN
            ),
            409,
            "transition_not_allowed",
        ),
        (
            client.post(
                "/v2/bookings/nope/transitions", json={"transition": "approve"}, headers=ADMIN
            ),
            404,
            "not_found",
        ),
        (client.put("/v2/bookings/b-1", json={"title": 5}, headers=ADMIN), 422, "invalid_type"),
        (
            client.put("/v2/bookings/b-1", json={"colour": "red"}, headers=ADMIN),
            422,
            "unknown_field",
        ),
        (
            client.put(
                "/v2/bookings/b-1", data="{", content_type="application/json", headers=ADMIN
            ),
            400,
            "malformed_json",
        ),
        (
            client.put("/v2/bookings/b-1", data="x", content_type="text/plain", headers=ADMIN),
            415,
            "unsupported_media_type",
        ),
        (
            client.put("/v2/bookings/b-1", json={"rev": "9-stale"}, headers=ADMIN),
            409,
            "rev_conflict",
        ),
        (client.put("/v2/bookings/b-1", json={}, headers=USER), 403, "forbidden"),
        (client.put("/v2/bookings/b-1", json={}), 401, "unauthenticated"),
        (client.get("/v2/profiles/nobody", headers=USER), 404, "not_found"),
        (client.delete("/v2/bookings/b-1", headers=ADMIN), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code)


def test_receiver_fills_in_the_profile_before_the_login_answers(
    demo: Flask, serve: Any, capsys: Any
) -> None:
    base = serve(demo).url
    receiver = create_receiver(SECRET, callback_url=base, token="admin-token")
    receiver_url = serve(receiver).url
    register_all(demo.test_client(), receiver_url, ["user_registered", "profile_updated"])
    login = requests.post(f"{base}/sso/login", headers=SSO, timeout=10).json()
    # The integration's own data is already in the profile the login answers with.
    assert login["user"]["userFields"] == [{"name": "department", "value": "Cardiology"}]
    wait_until(lambda: "Received profile_updated" in capsys.readouterr().out)


def test_python_m_example_app_serves_the_api(tmp_path: Path) -> None:
    # Port 0: the system picks a free port, which the server's startup line tells.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "example_app",
            "--port",
            "0",
            "--instance-path",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    output = ""
    try:
        deadline = time.monotonic() + 20
        while not (running := re.search(r"Running on http://127\.0\.0\.1:(\d+)", output)):
            assert process.poll() is None, output
            assert time.monotonic() < deadline, f"the demo app did not start in 20 s: {output}"
            with contextlib.suppress(queue.Empty):
                output += lines.get(timeout=0.2)
        site = f"http://127.0.0.1:{running.group(1)}"
        base = f"{site}/v2/webhooks"
        response = requests.get(f"{base}/topics", headers=ADMIN, timeout=10)
        assert response.status_code == 200
        assert len(response.json()["topics"]) == 5
    finally:
        process.terminate()
        process.wait(timeout=10)
        reader.join(10)
    assert "DEMO MODE" in output
    # Its banner's addresses are the port it listens on, not the 0 it was given.
    assert f"Demo host app on {site}\n" in output
    assert f"curl -H 'Authorization: Bearer admin-token' {base}/topics" in output
    assert f"  {base}/portal/" in output
