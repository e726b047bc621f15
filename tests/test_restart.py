"""A host killed with deliveries pending delivers them once it is started again, with no
request: the demo, ``flask run`` and gunicorn with two forked workers, each a real process."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jose.jws
import pytest
import requests

from tests.processes import HostProcess, host_environment, python
from tests.receivers import Receiver, Reply, wait_until

ADMIN = {"Authorization": "Bearer admin-token"}
EVENTS = 300
#: Shorter than the claims' lease (about a minute by default): the claims of the killed
#: process are given back at the restart, not found expired.
DELIVERED_WITHIN = 45.0


def request_ids(server: Receiver) -> set[str]:
    return {
        json.loads(jose.jws.get_unverified_claims(request.body.decode()))["webhook_request_id"]
        for request in server.received
    }


def register(base: str, url: str) -> None:
    response = requests.post(
        f"{base}/v2/webhooks/registrations",
        json={"topic": "profile_updated", "url": url, "secret": "signature_secret_0123"},
        headers=ADMIN,
        timeout=10,
    )
    assert response.status_code == 201, response.text


def fire_demo(base: str) -> None:
    login = requests.post(f"{base}/sso/login", headers={"X-SSO-Email": "ann@example.com"})
    profile = login.json()["user"]["id"]
    with requests.Session() as session:
        for n in range(EVENTS):
            response = session.put(
                f"{base}/v2/profiles/{profile}", json={"lastName": f"Lee {n}"}, headers=ADMIN
            )
            assert response.status_code == 200, response.text


def fire_host(base: str) -> None:
    response = requests.post(f"{base}/fire", params={"n": EVENTS}, timeout=60)
    assert response.json() == {"fired": EVENTS}


@pytest.fixture
def gated_receiver() -> Iterator[tuple[Receiver, threading.Event]]:
    """A receiver that holds every request until the gate opens, then answers 200."""
    gate = threading.Event()
    server = Receiver(lambda request, n: Reply() if gate.is_set() else Reply(wait=gate))
    yield server, gate
    gate.set()
    server.close()


Starter = Callable[[], HostProcess]


def demo(tmp_path: Path, postgres_url: str) -> tuple[Starter, Callable[[str], None]]:
    command = [python(), "-m", "example_app", "--port", "0", "--instance-path", str(tmp_path)]
    listening = r"Running on http://127\.0\.0\.1:(\d+)"
    return lambda: HostProcess(command, host_environment(), listening=listening), fire_demo


def flask_run(tmp_path: Path, postgres_url: str) -> tuple[Starter, Callable[[str], None]]:
    env = host_environment(KWT_DATABASE_URI=f"sqlite:///{tmp_path / 'host.sqlite3'}")
    command = [python(), "-m", "flask", "--app", "tests.restart_host", "run", "--port", "0"]
    listening = r"Running on http://127\.0\.0\.1:(\d+)"
    return lambda: HostProcess(command, env, listening=listening), fire_host


def gunicorn_command(*options: str) -> list[str]:
    executable = shutil.which("gunicorn", path=str(Path(python()).parent))
    assert executable is not None, "gunicorn is part of the test extra"
    return [executable, "-w", "2", *options, "-b", "127.0.0.1:0", "tests.restart_host:app"]


def gunicorn(tmp_path: Path, postgres_url: str) -> tuple[Starter, Callable[[str], None]]:
    """Two workers forked from a master that loaded the app."""
    env = host_environment(KWT_DATABASE_URI=postgres_url)
    command = gunicorn_command("--preload")
    listening = r"Listening at: http://127\.0\.0\.1:(\d+)"
    return lambda: HostProcess(command, env, listening=listening), fire_host


def gunicorn_lazy(tmp_path: Path, postgres_url: str) -> tuple[Starter, Callable[[str], None]]:
    """Two workers that each load the app."""
    env = host_environment(KWT_DATABASE_URI=postgres_url)
    listening = r"Listening at: http://127\.0\.0\.1:(\d+)"
    return lambda: HostProcess(gunicorn_command(), env, listening=listening), fire_host


@pytest.mark.parametrize("server", [demo, flask_run, gunicorn, gunicorn_lazy])
def test_a_killed_host_delivers_what_it_left_pending_once_restarted_with_no_request(
    server: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    gated_receiver: tuple[Receiver, threading.Event],
) -> None:
    receiver, gate = gated_receiver
    on_postgres = server in (gunicorn, gunicorn_lazy)
    postgres_url = request.getfixturevalue("postgres_url") if on_postgres else ""
    start, fire = server(tmp_path, postgres_url)
    host = start()
    try:
        register(host.base, receiver.url())
        fire(host.base)
        receiver.wait_for(1)  # attempts under way, their deliveries claimed
    finally:
        host.kill()
    assert len(request_ids(receiver)) < EVENTS
    gate.set()
    restarted = start()  # no request is sent to it
    try:
        wait_until(lambda: len(request_ids(receiver)) == EVENTS, timeout=DELIVERED_WITHIN)
    finally:
        restarted.stop()
    # The killed process's claims were given back at the restart, not found expired.
    assert "claimed by processes of this machine that died" in restarted.output
    if on_postgres:
        # The engines run in the two workers, none in the master.
        master = restarted.process.pid
        engines = set(
            re.findall(
                r"\[(\d+)\] flask_kaizen_webhooks: Webhook dispatcher started", restarted.output
            )
        )
        assert len(engines) == 2 and str(master) not in engines, restarted.output
