"""Operator commands run the way operators run them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN, DELIVERY_CONFIG, OTHER_ADMIN, register
from tests.receivers import Reply, wait_until


def test_worker_process_sends_the_outbox_and_stops_on_sigterm(
    make_host: Any, receiver: Any, tmp_path: Path
) -> None:
    server = receiver()
    writer = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(writer, server.url())
    database = writer.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    with writer.app.app_context():
        ids = [writer.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(5)]
    (tmp_path / "worker_app.py").write_text(
        textwrap.dedent(
            f"""
            from flask import Flask
            from flask_kaizen_webhooks import KaizenWebhooks

            app = Flask(__name__)
            app.config.update(SECRET_KEY="test-secret-key",
                              KAIZEN_WEBHOOKS_DATABASE_URI={database!r},
                              KAIZEN_WEBHOOKS_POLL_INTERVAL=0.05,
                              KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.1/32"])
            KaizenWebhooks(app)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "worker_app", "webhooks", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        server.wait_for(5, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Stopped" in output
    with writer.app.app_context():
        from sqlalchemy import select

        from flask_kaizen_webhooks import get_state
        from flask_kaizen_webhooks.storage.tables import Delivery

        def all_succeeded() -> bool:
            with get_state().database.independent_session() as session:
                statuses = session.scalars(select(Delivery.status).where(Delivery.id.in_(ids)))
                return set(statuses) == {"succeeded"}

        wait_until(all_succeeded)


@pytest.fixture
def host(make_host: Any, backend: str) -> Any:
    return make_host(backend, **DELIVERY_CONFIG)


def run(host: Any, *args: str) -> Any:
    return host.app.test_cli_runner().invoke(args=["webhooks", *args])


def test_list_filters_and_never_shows_secrets(host: Any) -> None:
    first = register(host, "http://127.0.0.1:9/a", secret="very_secret_value_1")
    register(host, "http://127.0.0.1:9/b", topic="booking_updated", secret="very_secret_value_2")
    register(host, "http://127.0.0.1:9/c", headers=OTHER_ADMIN)
    everything = run(host, "list")
    assert everything.exit_code == 0
    assert everything.output.endswith("\n3 registrations\n")
    assert "very_secret_value" not in everything.output
    mine = run(host, "list", "--owner", "org-1", "--topic", "profile_updated")
    assert first["id"] in mine.output and mine.output.endswith("\n1 registration\n")
    assert run(host, "list", "--state", "disabled").output.endswith("\n0 registrations\n")


def test_deliveries_stats_redeliver_and_purge(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=500))
    registration = register(host, server.url())
    with host.app.app_context():
        ids = [host.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(2)]
    wait_until(lambda: "2 deliveries" in run(host, "deliveries", "--status", "failed").output)
    listed = run(host, "deliveries", "--registration", registration["id"], "--since", "1h")
    assert all(delivery_id in listed.output for delivery_id in ids)
    assert "0 deliveries" in run(host, "deliveries", "--since", "2999-01-01T00:00:00Z").output
    stats = run(host, "stats")
    assert stats.exit_code == 0
    assert re.search(r"profile_updated\s+0\s+0\s+2", stats.output), stats.output
    assert "oldest pending: none" in stats.output
    # Redeliver one by id, then every failed one of the registration.
    server.responder = lambda request, n: Reply()
    one = run(host, "redeliver", ids[0])
    assert one.exit_code == 0 and "Queued 1" in one.output
    wait_until(lambda: "\n1 delivery\n" in run(host, "deliveries", "--status", "succeeded").output)
    rest = run(host, "redeliver", "--failed", "--registration", registration["id"])
    assert "Queued 1" in rest.output
    wait_until(lambda: "2 deliveries" in run(host, "deliveries", "--status", "succeeded").output)
    # Purge keeps recent records by default; --older-than 0 removes every finished one.
    assert "Deleted 0 deliveries" in run(host, "purge").output
    purged = run(host, "purge", "--older-than", "0")
    assert "Deleted 2 deliveries and 8 attempts" in purged.output, purged.output
    assert "0 deliveries" in run(host, "deliveries").output


def test_purge_never_deletes_pending(make_host: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(host, "http://127.0.0.1:9/a")
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
    assert "Deleted 0 deliveries" in run(host, "purge", "--older-than", "0").output
    stats = run(host, "stats").output
    assert re.search(r"profile_updated\s+1\s+0\s+0", stats)
    assert re.search(r"oldest pending: \d+ s", stats)


def test_enable_disable_and_test(host: Any, receiver: Any) -> None:
    server = receiver()
    registration = register(host, server.url())
    disabled = run(host, "disable", registration["id"])
    assert disabled.exit_code == 0 and "is disabled" in disabled.output
    shown = (
        host.app.test_client()
        .get(f"/v2/webhooks/registrations/{registration['id']}", headers=ADMIN)
        .get_json()
    )
    assert (shown["state"], shown["disabled_reason"]) == ("disabled", "disabled by an operator")
    refused = run(host, "test", "profile_updated")
    assert refused.exit_code == 1 and "No registration" in refused.output
    assert run(host, "enable", registration["id"]).exit_code == 0
    tested = run(host, "test", "profile_updated")
    assert tested.exit_code == 0, tested.output
    assert registration["id"] in tested.output and "yes" in tested.output
    assert len(server.received) == 1


def test_options_shows_and_changes_ordering_and_rate(host: Any) -> None:
    registration = register(host, "http://127.0.0.1:9/a")
    shown = run(host, "options", registration["id"])
    assert shown.exit_code == 0
    assert "ordering none, max_per_second none." in shown.output
    changed = run(
        host, "options", registration["id"], "--ordering", "fifo", "--max-per-second", "20"
    )
    assert changed.exit_code == 0 and "ordering fifo, max_per_second 20." in changed.output
    url = f"/v2/webhooks/registrations/{registration['id']}"
    fetched = host.app.test_client().get(url, headers=ADMIN).get_json()
    assert (fetched["ordering"], fetched["max_per_second"]) == ("fifo", 20)
    assert fetched["rev"].startswith("2-")  # a new revision
    cleared = run(host, "options", registration["id"], "--max-per-second", "none")
    assert "ordering fifo, max_per_second none." in cleared.output
    for bad, message in (
        (["--max-per-second", "fast"], "a whole number, or none"),
        (["--max-per-second", "0"], "'max_per_second' must be a whole number from 1"),
        (["--ordering", "lifo"], "'lifo' is not one of 'none', 'fifo'"),
    ):
        refused = run(host, "options", registration["id"], *bad)
        assert refused.exit_code != 0 and message in refused.output, refused.output


def test_clear_errors(host: Any) -> None:
    for args, message in (
        (["enable", "nope"], "No registration with id nope"),
        (["disable", "nope"], "No registration with id nope"),
        (["options", "nope"], "No registration with id nope"),
        (["redeliver", "nope"], "No delivery with id nope"),
        (["redeliver"], "Give either a DELIVERY_ID or --failed"),
        (["test", "profile_uploaded"], "Unknown topic 'profile_uploaded'"),
        (["deliveries", "--since", "yesterday"], "neither an ISO time nor a duration"),
    ):
        result = run(host, *args)
        assert result.exit_code != 0
        assert message in result.output, result.output


def test_redeliver_leaves_a_delivery_being_sent_alone(host: Any, receiver: Any) -> None:
    gate = threading.Event()
    server = receiver(lambda request, n: Reply(wait=gate))
    register(host, server.url())
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    server.wait_for(1)
    try:
        result = run(host, "redeliver", delivery_id)
    finally:
        gate.set()
    assert "Queued 0" in result.output
    assert "Left 1 alone: an attempt of it is under way." in result.output
    wait_until(lambda: "\n1 delivery\n" in run(host, "deliveries", "--status", "succeeded").output)
    assert len(server.received) == 1


def test_counts_read_as_singular_or_plural(host: Any, receiver: Any) -> None:
    server = receiver()
    register(host, server.url())
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    server.wait_for(1)
    wait_until(lambda: "succeeded" in run(host, "deliveries").output)
    assert run(host, "deliveries").output.endswith("\n1 delivery\n")
    assert run(host, "list").output.endswith("\n1 registration\n")
    assert run(host, "deliveries", "--status", "failed").output.endswith("\n0 deliveries\n")
    assert "Queued 1 delivery again." in run(host, "redeliver", delivery_id).output
    server.wait_for(2)
    wait_until(lambda: "succeeded" in run(host, "deliveries").output)
    register(host, server.url("/second"))
    assert run(host, "list").output.endswith("\n2 registrations\n")
    assert "secrets of 2 registrations." in run(host, "rotate-keys").output
    purged = run(host, "purge", "--older-than", "0").output
    assert purged.startswith("Deleted 1 delivery and 2 attempts finished before"), purged


def table(output: str, headers: list[str]) -> list[dict[str, str]]:
    """The rows of a table the CLI printed under ``headers``, cell by cell."""
    lines = output.splitlines()
    top = next(n for n, line in enumerate(lines) if line.startswith(headers[0]))
    starts, at = [], 0
    for header in headers:
        at = lines[top].index(header, at)
        starts.append(at)
        at += len(header)
    ends = [*starts[1:], None]
    rows = []
    for line in lines[top + 1 :]:
        if not line.startswith(" ") and len(line) > starts[-1]:
            cells = [line[start:end].strip() for start, end in zip(starts, ends, strict=True)]
            rows.append(dict(zip(headers, cells, strict=True)))
    return rows


LIST_HEADERS = [
    "ID",
    "OWNER",
    "TOPIC",
    "STATE",
    "URL",
    "RETRYING",
    "FAILED FOR GOOD IN A ROW",
    "CREATED",
]


def test_list_shows_deliveries_retrying_apart_from_failures_for_good(
    host: Any, receiver: Any
) -> None:
    # One receiver fails a delivery for good (three attempts); the other fails once, then asks
    # for an hour's pause: its delivery waits for a retry.
    failing = receiver(lambda request, n: Reply(status=500))
    pausing = receiver(
        lambda request, n: (
            Reply(status=500) if n == 1 else Reply(503, headers={"Retry-After": "3600"})
        )
    )
    failed = register(host, failing.url())
    retrying = register(host, pausing.url())
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
    failing.wait_for(3)
    pausing.wait_for(2)

    def listed() -> dict[str, dict[str, str]]:
        return {row["ID"]: row for row in table(run(host, "list").output, LIST_HEADERS)}

    wait_until(lambda: listed()[failed["id"]]["FAILED FOR GOOD IN A ROW"] == "1")
    rows = listed()
    assert rows[failed["id"]]["RETRYING"] == "0"
    assert rows[retrying["id"]]["RETRYING"] == "1"
    assert rows[retrying["id"]]["FAILED FOR GOOD IN A ROW"] == "0"


def test_stats_show_test_deliveries_apart(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=500 if n == 2 else 200))
    register(host, server.url())
    assert run(host, "test", "profile_updated").exit_code == 0  # answered 200
    assert run(host, "test", "profile_updated").exit_code == 1  # answered 500
    tested = host.app.test_client().post(
        "/v2/webhooks/test", json={"topic": "profile_updated"}, headers=ADMIN
    )
    assert tested.status_code == 200
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
    server.wait_for(4)
    wait_until(lambda: "pending" not in run(host, "deliveries").output)
    stats = run(host, "stats").output
    assert re.search(r"^profile_updated\s+0\s+1\s+0$", stats, re.MULTILINE), stats
    assert "test deliveries: 3 (1 failed)" in stats


def test_redeliver_leaves_deliveries_of_disabled_and_deleted_registrations_alone(
    host: Any, receiver: Any
) -> None:
    server = receiver(lambda request, n: Reply(status=500))
    register(host, server.url())
    disabled = register(host, server.url("/disabled"))
    deleted = register(host, server.url("/deleted"))
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
        host.webhooks.trigger("profile_updated", {"n": 2})
    server.wait_for(18)  # two deliveries to each of three receivers, three attempts each
    wait_until(lambda: "pending" not in run(host, "deliveries").output)
    assert run(host, "disable", disabled["id"]).exit_code == 0
    client = host.app.test_client()
    url = f"/v2/webhooks/registrations/{deleted['id']}?rev={deleted['rev']}"
    assert client.delete(url, headers=ADMIN).status_code == 200
    result = run(host, "redeliver", "--failed")
    assert result.exit_code == 0
    assert "Queued 2 deliveries again." in result.output
    assert "Left 2 alone: their registration is disabled; enable it first." in result.output
    assert "Left 2 alone: their registration was deleted." in result.output
    server.wait_for(24)
    wait_until(lambda: "pending" not in run(host, "deliveries").output)
    assert {r.path for r in server.received[18:]} == {"/hook"}  # only the active one's
    one = run(host, "deliveries", "--registration", deleted["id"]).output.splitlines()[1].split()[0]
    alone = run(host, "redeliver", one)
    assert "Queued 0 deliveries again." in alone.output
    assert "Left 1 alone: its registration was deleted." in alone.output


def test_the_views_say_which_deliveries_are_claimed_by_whom_and_until_when(
    make_host: Any, receiver: Any
) -> None:
    from datetime import timedelta

    from flask_kaizen_webhooks import get_state
    from flask_kaizen_webhooks.storage.holders import new_token
    from flask_kaizen_webhooks.storage.tables import Delivery

    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(host, receiver().url())
    with host.app.app_context():
        held, lapsed, waiting = (
            host.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(3)
        )
    state = get_state(host.app)
    now = state.clock.now()
    with host.app.app_context(), state.database.writing() as session:
        for delivery_id, until in ((held, now + timedelta(minutes=5)), (lapsed, now)):
            row = session.get(Delivery, delivery_id)
            assert row is not None
            row.claim_token, row.next_attempt_at = new_token(), until
    listed = run(host, "deliveries").output
    lines = {line.split()[0]: line for line in listed.splitlines()[1:] if line.strip()}
    assert f"held by process {os.getpid()} until" in lines[held]
    assert f"lapsed by process {os.getpid()} at" in lines[lapsed]
    assert "held" not in lines[waiting] and "lapsed" not in lines[waiting]
    assert (
        "being sent (claimed): 1 delivery, the last claim held until" in run(host, "stats").output
    )


def test_the_test_command_waits_as_long_as_any_attempt_for_a_synchronous_topic(
    make_host: Any, receiver: Any
) -> None:
    """An operator's test of a login hook waits ASYNC_TIMEOUT, not the login's deadline."""
    host = make_host(
        **{
            **DELIVERY_CONFIG,
            "KAIZEN_WEBHOOKS_SYNC_TIMEOUT": 0.3,
            "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 5,
        }
    )
    server = receiver(lambda received, n: Reply(delay=0.8))
    register(host, server.url(), topic="user_logged_in")
    tested = run(host, "test", "user_logged_in")
    assert tested.exit_code == 0, tested.output
    assert "yes" in tested.output and "timed out" not in tested.output
