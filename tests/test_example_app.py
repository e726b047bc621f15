"""The demo host app: seeded API users and the registration API, as ``make demo`` runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from example_app import create_app
from flask_kaizen_webhooks import get_state
from tests.conftest import free_port

BODY = {
    "topic": "profile_updated",
    "url": "http://127.0.0.1:6785/profile_updated",
    "secret": "signature_secret_demo",
}


def test_demo_tokens_and_embedded_sqlite(tmp_path: Path) -> None:
    app = create_app({"TESTING": True}, instance_path=str(tmp_path))
    client = app.test_client()
    admin = {"Authorization": "Bearer admin-token"}
    created = client.post("/v2/webhooks/registrations", json=BODY, headers=admin)
    assert created.status_code == 201
    listed = client.get("/v2/webhooks/registrations", headers=admin).get_json()["items"]
    assert [item["id"] for item in listed] == [created.get_json()["id"]]
    user = {"Authorization": "Bearer user-token"}
    assert client.get("/v2/webhooks/registrations", headers=user).status_code == 403
    assert client.get("/v2/webhooks/registrations").status_code == 401
    assert (tmp_path / "example_app.sqlite3").is_file()
    get_state(app).shutdown()


def test_python_m_example_app_serves_the_api(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "example_app",
            "--port",
            str(port),
            "--instance-path",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/v2/webhooks"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = requests.get(
                    f"{base}/topics", headers={"Authorization": "Bearer admin-token"}, timeout=2
                )
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the demo app did not start in 20 s"
                time.sleep(0.2)
        assert response.status_code == 200
        assert len(response.json()["topics"]) == 5
        created = requests.post(
            f"{base}/registrations",
            json=BODY,
            headers={"Authorization": "Bearer admin-token"},
            timeout=5,
        )
        assert created.status_code == 201
    finally:
        process.terminate()
        process.wait(timeout=10)
