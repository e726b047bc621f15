"""The Celery executor with real Celery worker processes, the Redis server as the broker and the
PostgreSQL server as the database, all on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jose.jws
import pytest
from flask import Flask
from sqlalchemy import func, select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.delivery.celery_executor import DELIVER_MANY
from flask_kaizen_webhooks.storage import outbox
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import ADMIN, Host, register, service_unavailable
from tests.processes import celery_worker_command
from tests.receivers import Reply, wait_until

pytest.importorskip("celery", reason="the celery extra is not installed")

REDIS_URL = os.environ.get("KAIZEN_WEBHOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def celery_env(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Environment shared by this test's host app and its workers: a fresh database, and a
    queue of its own on the Redis server (removed at the end)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")
    from sqlalchemy import create_engine

    from flask_kaizen_webhooks.storage import migrations

    engine = create_engine(postgres_url)
    migrations.drop_all(engine)
    engine.dispose()
    env = {
        "KWT_DATABASE_URI": postgres_url,
        "KWT_BROKER": REDIS_URL,
        "KWT_QUEUE": f"kaizen-webhooks-test-{uuid.uuid4().hex[:8]}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env
    client.delete(env["KWT_QUEUE"])
    client.close()


@pytest.fixture
def start_worker(
    celery_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start Celery worker processes on this test's queue; all are stopped at the end."""
    workers: list[subprocess.Popen[bytes]] = []

    def start(
        concurrency: int = 4, *, beat: bool = False, config: dict[str, Any] | None = None
    ) -> subprocess.Popen[bytes]:
        name = f"worker{len(workers)}"
        beat_schedule = tmp_path / f"beat{len(workers)}" if beat else None
        command = celery_worker_command(name, concurrency=concurrency, beat=beat_schedule)
        env = {**os.environ, **celery_env, "KWT_CONFIG": json.dumps(config or {})}
        workers.append(subprocess.Popen(command, cwd=ROOT, env=env))
        return workers[-1]

    yield start
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


@pytest.fixture
def web(celery_env: dict[str, str]) -> Iterator[Host]:
    """The host's web side: it writes the outbox and hands ids to Celery."""
    from tests.celery_host import create_host

    app, webhooks = create_host()
    host = Host(app, webhooks, None)
    yield host
    with app.app_context():
        get_state(app).shutdown(timeout=5)
        get_state(app).database.dispose()


def deliveries(host: Host) -> list[Delivery]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return list(session.scalars(select(Delivery)))


def wait_for_successes(host: Host, count: int, timeout: float = 90) -> None:
    """Wait until ``count`` deliveries have succeeded, counting them in the database."""

    def succeeded() -> int:
        with host.app.app_context(), get_state().database.independent_session() as session:
            query = select(func.count()).select_from(Delivery).where(Delivery.status == "succeeded")
            return int(session.scalar(query) or 0)

    wait_until(lambda: succeeded() == count, timeout=timeout, interval=0.2)


def request_ids(server: Any, path: str | None = None) -> Counter[str]:
    """The ids of the deliveries ``server`` received (at ``path`` only, if given)."""
    return Counter(
        json.loads(jose.jws.get_unverified_claims(r.body.decode()))["webhook_request_id"]
        for r in list(server.received)
        if path is None or r.path == path
    )


def test_deliveries_arrive_through_a_celery_worker(
    web: Host, start_worker: Any, receiver: Any
) -> None:
    servers = [receiver(), receiver()]
    for server in servers:
        register(web, server.url())
    start_worker()
    ids: list[str] = []
    with web.app.app_context():
        for n in range(20):
            ids += web.webhooks.trigger("profile_updated", {"n": n})
    assert len(ids) == 40
    wait_for_successes(web, 40)
    received = request_ids(servers[0]) + request_ids(servers[1])
    assert received == Counter({delivery_id: 1 for delivery_id in ids})
    assert {d.attempts for d in deliveries(web)} == {1}


def test_a_failed_attempt_is_retried_on_the_schedule(
    web: Host, start_worker: Any, receiver: Any
) -> None:
    server = receiver(lambda request, n: Reply(status=500) if n == 1 else Reply())
    register(web, server.url())
    start_worker(concurrency=2)
    with web.app.app_context():
        [delivery_id] = web.webhooks.trigger("profile_updated", {"n": 1})
    wait_for_successes(web, 1)
    [delivery] = deliveries(web)
    assert delivery.attempts == 2
    assert request_ids(server) == Counter({delivery_id: 2})


def test_the_default_install_needs_neither_celery_nor_redis(tmp_path: Path) -> None:
    code = """
import sys
sys.modules["celery"] = None  # as if not installed: importing it fails
sys.modules["redis"] = None
from flask import Flask
from flask_kaizen_webhooks import KaizenWebhooks
app = Flask("plain", instance_path=sys.argv[1])
app.config.update(SECRET_KEY="k", KAIZEN_WEBHOOKS_EXECUTOR="none")
webhooks = KaizenWebhooks(app)
with app.app_context():
    assert webhooks.trigger("profile_updated", {"n": 1}) == []
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_celery_executor_needs_the_host_s_celery_app(tmp_path: Path) -> None:
    from flask_kaizen_webhooks import ConfigurationError, KaizenWebhooks

    app = Flask("no_celery", instance_path=str(tmp_path))
    app.config.update(SECRET_KEY="k", KAIZEN_WEBHOOKS_EXECUTOR="celery")
    with pytest.raises(ConfigurationError, match=re.escape('app.extensions["celery"]')):
        KaizenWebhooks(app)
    app.config.update(KAIZEN_WEBHOOKS_DISPATCHER="none")
    with pytest.raises(ConfigurationError, match="not both"):
        KaizenWebhooks(app)


#: A short lease and a fast sweep, so that recovery shows within seconds; the time limits
#: still leave a loaded machine room to answer, so that no attempt is cut off and retried.
RECOVERY = {
    "KAIZEN_WEBHOOKS_CLAIM_LEASE": 8,
    "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 4,
    "KAIZEN_WEBHOOKS_CONNECT_TIMEOUT": 2,
    "KAIZEN_WEBHOOKS_CELERY_SWEEP_INTERVAL": 1,
}


def test_two_workers_never_send_the_same_attempt(
    web: Host, start_worker: Any, receiver: Any
) -> None:
    server = receiver()
    register(web, server.url("/a"))
    register(web, server.url("/b"))
    ids: list[str] = []
    with web.app.app_context():
        for n in range(100):
            ids += web.webhooks.trigger("profile_updated", {"n": n})
    # Every task is in the queue before the two workers race for it; the sweep sends tasks
    # again for some on top, which the claim must absorb too.
    start_worker(concurrency=4, beat=True, config=RECOVERY)
    start_worker(concurrency=4)
    wait_for_successes(web, 200)
    assert request_ids(server) == Counter({delivery_id: 1 for delivery_id in ids})


def test_a_worker_killed_mid_task_loses_nothing(
    web: Host, start_worker: Any, receiver: Any
) -> None:
    gate = threading.Event()
    server = receiver(lambda request, n: Reply(wait=gate))  # nothing answered before the kill
    register(web, server.url())
    doomed = start_worker(concurrency=1, config=RECOVERY)
    ids: list[str] = []
    with web.app.app_context():
        for n in range(10):
            ids += web.webhooks.trigger("profile_updated", {"n": n})
    server.wait_for(1)  # attempts under way, unanswered
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    cut_off = set(request_ids(server))
    gate.set()
    start_worker(concurrency=2, beat=True, config=RECOVERY)
    wait_for_successes(web, 10)
    received = request_ids(server)
    assert set(received) == set(ids)
    # The ones cut off were sent again, once; nothing else twice.
    assert {delivery_id for delivery_id, count in received.items() if count > 1} == cut_off
    assert max(received.values()) == 2


def test_the_sweep_sends_work_whose_task_went_missing(
    web: Host, start_worker: Any, receiver: Any, celery_env: dict[str, str]
) -> None:
    import redis

    server = receiver()
    register(web, server.url())
    with web.app.app_context():
        ids = [web.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(5)]
    # The broker loses every message (a restart without persistence, say), once the
    # publishing thread has handed all five over (in one task or several).
    client = redis.Redis.from_url(REDIS_URL)
    wait_until(lambda: queued_ids(client, celery_env["KWT_QUEUE"]) == set(ids))
    assert client.delete(celery_env["KWT_QUEUE"]) == 1
    client.close()
    start_worker(concurrency=2, beat=True, config=RECOVERY)
    wait_for_successes(web, 5)
    assert request_ids(server) == Counter({delivery_id: 1 for delivery_id in ids})


def queued_ids(client: Any, queue: str) -> set[str]:
    """The delivery ids carried by the tasks waiting on ``queue`` (Celery's messages on Redis:
    JSON whose body is the base64 of ``[args, kwargs, embed]``)."""
    found: set[str] = set()
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == DELIVER_MANY:
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.update(args[0])
    return found


def committed_events(host: Host, count: int) -> list[str]:
    """Events written as a host's transaction writes them (one row each), committed; the ids
    of their deliveries."""
    ids: list[str] = []
    with host.app.app_context():
        state = get_state()
        with state.database.writing() as session:
            connection = session.connection()
            for n in range(count):
                ids += outbox.add_event(
                    connection,
                    recipients=outbox.active_recipients(connection, topic="profile_updated"),
                    topic="profile_updated",
                    document_json=json.dumps({"n": n}),
                    now=state.clock.now(),
                ).delivery_ids
    return ids


def test_events_are_fanned_out_by_the_tasks_or_else_by_the_sweep(
    web: Host, start_worker: Any, receiver: Any
) -> None:
    server = receiver()
    register(web, server.url())
    handed = committed_events(web, 3)
    with web.app.app_context():
        get_state().executor.submit(handed)  # as after the host's commit
    lost = committed_events(web, 2)  # their tasks never reach the broker
    start_worker(concurrency=2, beat=True, config=RECOVERY)
    wait_for_successes(web, 5)
    assert request_ids(server) == Counter({delivery_id: 1 for delivery_id in handed + lost})


def test_sync_topics_and_the_test_endpoint_stay_inline(web: Host, receiver: Any) -> None:
    # No Celery worker runs: whatever arrives was sent by the web process itself.
    server = receiver()
    register(web, server.url(), topic="user_logged_in")
    register(web, server.url(), topic="profile_updated")
    with web.app.app_context():
        [result] = web.webhooks.trigger("user_logged_in", {"user_id": "u-1"})
    assert result.ok and len(server.received) == 1  # type: ignore[union-attr]
    response = web.app.test_client().post(
        "/v2/webhooks/test", json={"topic": "profile_updated"}, headers=ADMIN
    )
    assert response.status_code == 200
    assert [d["ok"] for d in response.get_json()["deliveries"]] == [True]
    assert len(server.received) == 2


def test_a_broker_down_at_commit_time_delays_but_loses_nothing(
    celery_env: dict[str, str],
    start_worker: Any,
    receiver: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.celery_host import create_host

    unreachable = {
        "broker_url": "redis://127.0.0.1:1/0",  # nothing listens there
        "task_default_queue": celery_env["KWT_QUEUE"],
        "broker_connection_max_retries": 1,
    }
    monkeypatch.setenv("KWT_CONFIG", json.dumps({"CELERY": unreachable}))
    app, webhooks = create_host()
    web = Host(app, webhooks, None)
    try:
        server = receiver()
        register(web, server.url())
        with app.app_context():
            ids = [web.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(3)]
        # Committed, though no task could be sent: the host's call did not fail.
        assert [d.status for d in deliveries(web)] == ["pending"] * 3
        start_worker(concurrency=2, beat=True, config=RECOVERY)
        wait_for_successes(web, 3)
        assert request_ids(server) == Counter({delivery_id: 1 for delivery_id in ids})
    finally:
        with app.app_context():
            get_state(app).shutdown(timeout=5)
            get_state(app).database.dispose()


def test_a_worker_sends_due_work_from_its_start_without_any_task(
    web: Host, start_worker: Any, receiver: Any
) -> None:
    # Work left due (a retry, say) while no worker ran, and no message for it anywhere: no
    # beat runs either. The worker's engine starts with the worker and finds it at its poll.
    server = receiver()
    register(web, server.url())
    ids = committed_events(web, 3)
    start_worker(concurrency=2)
    wait_for_successes(web, 3, timeout=30)
    assert request_ids(server) == Counter({delivery_id: 1 for delivery_id in ids})


def test_prefork_children_send_and_give_back_their_shares_when_the_worker_stops(
    web: Host, receiver: Any, celery_env: dict[str, str]
) -> None:
    from flask_kaizen_webhooks.storage.slots import SLOTS

    server = receiver()
    register(web, server.url())
    command = celery_worker_command("prefork", pool="prefork")
    env = {**os.environ, **celery_env, "KWT_CONFIG": "{}"}
    worker = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        with web.app.app_context():
            ids = [web.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(5)]
        wait_for_successes(web, 5, timeout=60)

        def shares() -> int:
            with web.app.app_context(), get_state().database.independent_session() as session:
                return int(session.scalar(select(func.count()).select_from(SLOTS)) or 0)

        assert shares() > 0  # the children's engines hold them, for more work to come
        worker.terminate()  # a warm shutdown: each child stops its engine as it ends
        worker.wait(30)
        assert shares() == 0
        assert request_ids(server) == Counter({delivery_id: 1 for delivery_id in ids})
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
