"""When the engine starts: as soon as the app is served, never in tests or other commands
unless asked; and the claims of a process of this machine that died are given back at once."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.serving import StartAt
from flask_kaizen_webhooks.storage.holders import Holder, new_token, process_start, this_process
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import DELIVERY_CONFIG, register
from tests.processes import host_environment


def test_tests_start_the_engine_on_first_use_only(make_host: Any) -> None:
    host = make_host("sqlite")
    state = get_state(host.app)
    assert state.start_at is StartAt.FIRST_USE
    assert not state.executor.running  # type: ignore[attr-defined]


def test_autostart_true_starts_at_once(make_host: Any) -> None:
    host = make_host("sqlite", KAIZEN_WEBHOOKS_AUTOSTART=True)
    state = get_state(host.app)
    assert state.start_at is StartAt.NOW
    assert state.executor.running  # type: ignore[attr-defined]


def test_autostart_must_be_true_false_or_none(make_host: Any) -> None:
    from flask_kaizen_webhooks import ConfigurationError

    with pytest.raises(ConfigurationError, match="KAIZEN_WEBHOOKS_AUTOSTART"):
        make_host("sqlite", KAIZEN_WEBHOOKS_AUTOSTART="yes")


@pytest.mark.parametrize(
    ("command", "environment", "starts"),
    [
        (["-c", "import tests.restart_host"], {}, False),  # a script: a cron job, a migration
        (["-c", "import tests.restart_host"], {"WERKZEUG_RUN_MAIN": "true"}, True),  # reloader
        (["-m", "flask", "--app", "tests.restart_host", "webhooks", "stats"], {}, False),
        (["-m", "flask", "--app", "tests.restart_host", "routes"], {}, False),
    ],
)
def test_only_a_served_app_starts_its_engine(
    tmp_path: Any, command: list[str], environment: dict[str, str], starts: bool
) -> None:
    env = host_environment(KWT_DATABASE_URI=f"sqlite:///{tmp_path / 'host.sqlite3'}", **environment)
    done = subprocess.run(
        [sys.executable, *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert ("Webhook dispatcher started" in done.stderr) is starts, done.stderr


def test_a_token_names_its_process() -> None:
    token = new_token()
    assert len(token) <= 36  # fits the claim column
    holder = Holder.of(token)
    assert holder == this_process() and holder.runs()
    assert Holder.of("9b2f4a1e-5c3d-4e7a-8f10-2a3b4c5d6e7f") is None  # a plain UUID


def ended_process() -> Holder:
    """The holder of a process of this machine that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return Holder(this_process().machine, child.pid, 12345)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_claims_of_a_process_that_died_are_given_back_at_start(
    make_host: Any, receiver: Any, backend: str
) -> None:
    writer = make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    server = receiver()
    register(writer, server.url())
    with writer.app.app_context():
        ids = [writer.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(3)]
    state = get_state(writer.app)
    later = state.clock.now() + timedelta(minutes=10)
    dead = ended_process().prefix + "00000001"
    elsewhere = "ffffffff-000001-0000000001-00000001"  # another machine's: it may still run
    mine = new_token()
    with writer.app.app_context(), state.database.writing() as session:
        for delivery_id, token in zip(ids, [dead, elsewhere, mine], strict=True):
            row = session.get(Delivery, delivery_id)
            assert row is not None
            row.claim_token, row.next_attempt_at = token, later
    url = writer.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    restarted = make_host(
        backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_DATABASE_URI=url, keep_tables=True
    )
    restarted.webhooks.start(restarted.app)
    [request] = server.wait_for(1)  # the dead process's claim, given back and sent now
    assert request.headers["Webhook-Id"] == ids[0]
    with writer.app.app_context(), state.database.independent_session() as session:
        tokens = dict(session.execute(select(Delivery.id, Delivery.claim_token)).all())
    assert (tokens[ids[1]], tokens[ids[2]]) == (elsewhere, mine)  # left to their leases


def test_a_holder_ended_only_when_that_is_sure() -> None:
    import os
    import time

    me = this_process()
    assert Holder(me.machine, os.getpid(), 0).runs()  # a start time unknown: taken to run
    assert not Holder(me.machine, os.getpid(), me.started + 1).runs()  # its pid, given again
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while process_start(exited.pid) is not None:  # ended, not collected yet: a zombie
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.05)
    assert not Holder(me.machine, exited.pid, 0).runs()
    exited.wait()


def test_under_uwsgi_the_fork_hook_joins_the_hosts_own() -> None:
    """uWSGI forks its workers without Python's fork hooks: ``uwsgi.post_fork_hook`` is
    chained, the host's hook kept (uWSGI is not installed here: a stand-in module)."""
    script = (
        "import sys, types\n"
        "calls = []\n"
        "uwsgi = types.ModuleType('uwsgi')\n"
        "uwsgi.worker_id = lambda: 0\n"
        "uwsgi.post_fork_hook = lambda: calls.append('host')\n"
        "sys.modules['uwsgi'] = uwsgi\n"
        "from flask_kaizen_webhooks.serving import on_fork\n"
        "on_fork(lambda: calls.append('extension'))\n"
        "uwsgi.post_fork_hook()\n"
        "print(calls)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=host_environment(), capture_output=True, text=True
    )
    assert done.stdout.strip() == "['host', 'extension']", done.stderr
