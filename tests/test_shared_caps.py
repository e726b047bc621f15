"""The caps on attempts in flight hold across worker processes: two Celery workers, or two
``flask webhooks worker`` processes, on the PostgreSQL server, sending to one loopback receiver
that counts the requests it answers at once, by registration (its path) and in all (one host,
127.0.0.1). A hanging registration does not slow a healthy one on the same host, and a Celery
worker killed mid-batch loses nothing and sends nothing twice but what it was sending."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import DBAPIError

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.delivery.celery_executor import DELIVER_MANY
from flask_kaizen_webhooks.storage import slots
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import DELIVERY_CONFIG, Host, register
from tests.processes import HostProcess, celery_worker_command, host_environment, python
from tests.receivers import Receiver, Reply, wait_until
from tests.test_celery import (  # noqa: F401 (fixtures)
    RECOVERY,
    REDIS_URL,
    celery_env,
    committed_events,
    request_ids,
    web,
)

pytest.importorskip("celery", reason="the celery extra is not installed")

#: The default caps.
PER_REGISTRATION, PER_HOST = 2, 4
HOST_KEY = slots.HOST + "127.0.0.1"
#: Registrations on the one receiver, and events for each: 200 deliveries.
REGISTRATIONS, EVENTS = 5, 40
#: Seconds the receiver takes to answer, so that attempts overlap.
ANSWER_AFTER = 0.06


# Processes ----------------------------------------------------------------------------------


@dataclass
class CeleryWorker:
    """A Celery worker process; it also takes tasks from a queue of its own."""

    process: HostProcess
    queue: str


@pytest.fixture
def celery_worker(
    celery_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> Iterator[Callable[..., CeleryWorker]]:
    """Start Celery worker processes (thread pools) on this test's queue; all are stopped at
    the end, and their own queues removed."""
    import redis

    workers: list[CeleryWorker] = []

    def start(*, beat: bool = False, config: dict[str, Any] | None = None) -> CeleryWorker:
        name = f"worker{len(workers)}"
        own = f"{celery_env['KWT_QUEUE']}.{name}"
        command = celery_worker_command(
            name,
            loglevel="INFO",
            beat=tmp_path / name if beat else None,
            extra=[f"--queues={celery_env['KWT_QUEUE']},{own}"],
        )
        env = host_environment(**celery_env, KWT_CONFIG=json.dumps(config or {}))
        workers.append(CeleryWorker(HostProcess(command, env, listening=r" ready\."), own))
        return workers[-1]

    yield start
    for worker in workers:
        worker.process.stop()
    client = redis.Redis.from_url(REDIS_URL)
    for worker in workers:
        client.delete(worker.queue, f"_kombu.binding.{worker.queue}")
    client.close()


def start_engines(host: Host, workers: list[CeleryWorker]) -> None:
    """Start the engine of each worker, as its first task does, and wait until it runs."""
    celery_app = host.app.extensions["celery"]
    for worker in workers:
        celery_app.send_task(DELIVER_MANY, args=([],), queue=worker.queue)
    for worker in workers:
        worker.process.wait_for_output(r"Webhook dispatcher started")


@pytest.fixture
def thread_worker() -> Iterator[Callable[[str], HostProcess]]:
    """Start ``flask webhooks worker`` processes on a database; all are stopped at the end."""
    workers: list[HostProcess] = []

    def start(database: str) -> HostProcess:
        command = [python(), "-m", "flask", "--app", "tests.worker_host:create_app"]
        env = host_environment(KWT_DATABASE_URI=database)
        listening = r"Sending webhooks, up to \d+ at once"
        workers.append(HostProcess([*command, "webhooks", "worker"], env, listening=listening))
        return workers[-1]

    yield start
    for worker in workers:
        worker.stop()


# Looking at the database, through brief restarts of its server ---------------------------------


def statuses(host: Host, registration_ids: list[str] | None = None) -> Counter[str]:
    """The deliveries by status (of ``registration_ids`` only, if given); empty while the
    database cannot be reached."""
    query = select(Delivery.status, func.count()).group_by(Delivery.status)
    if registration_ids is not None:
        query = query.where(Delivery.registration_id.in_(registration_ids))
    try:
        with host.app.app_context(), get_state().database.independent_session() as session:
            return Counter({status: count for status, count in session.execute(query)})
    except DBAPIError:
        return Counter()


def wait_for_successes(host: Host, count: int, timeout: float = 60) -> None:
    wait_until(lambda: statuses(host) == Counter(succeeded=count), timeout=timeout, interval=0.1)


@dataclass
class SlotWatch:
    """Samples ``kaizen_webhook_slots`` while a test runs: the holders seen with a share of each
    key, and the most slots held of each at once."""

    url: str
    holders: dict[str, set[str]] = field(default_factory=dict)
    most: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> SlotWatch:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        engine = create_engine(self.url, pool_pre_ping=True)
        table = slots.SLOTS
        query = select(table.c.key, table.c.holder, table.c.held).where(
            table.c.held > 0, table.c.until > func.now()
        )
        while not self._stop.wait(0.02):
            try:
                with engine.connect() as connection:
                    rows = connection.execute(query).all()
            except DBAPIError:
                continue
            held: Counter[str] = Counter()
            for key, holder, count in rows:
                self.holders.setdefault(key, set()).add(holder)
                held[key] += count
            for key, count in held.items():
                self.most[key] = max(self.most[key], count)
        engine.dispose()


# The caps -----------------------------------------------------------------------------------


def send_through_two_engines(host: Host, receiver: Receiver, database: str) -> None:
    """While two engines run on ``database``: :data:`EVENTS` events to one registration alone
    (its cap binds), then :data:`EVENTS` to :data:`REGISTRATIONS` others (the host's cap
    binds), all on ``receiver``. Each delivery arrives once, and neither cap is ever exceeded,
    at the receiver or in the shares."""
    register(host, receiver.url("/alone"), topic="booking_updated")
    for n in range(REGISTRATIONS):
        register(host, receiver.url(f"/r{n}"))
    ids: list[str] = []
    with SlotWatch(database) as watch:
        for topic in ("booking_updated", "profile_updated"):
            with host.app.app_context():
                for n in range(EVENTS):
                    ids += host.webhooks.trigger(topic, {"n": n})
            wait_for_successes(host, len(ids))
    assert len(ids) == EVENTS * (1 + REGISTRATIONS)
    assert request_ids(receiver) == Counter({delivery_id: 1 for delivery_id in ids})
    by_path = dict(receiver.peak_by_path)
    print(f"\npeaks at the receiver: {receiver.peak} in all, by registration {by_path}")
    assert max(by_path.values()) <= PER_REGISTRATION, by_path
    assert receiver.peak <= PER_HOST
    # Or nothing was tested: the attempts hardly overlapped.
    assert by_path["/alone"] == PER_REGISTRATION and receiver.peak >= PER_HOST - 1
    # Both engines sent (each held a share of the host), and the shares kept to the caps.
    assert len(watch.holders[HOST_KEY]) == 2, watch.holders
    assert watch.most[HOST_KEY] <= PER_HOST, watch.most
    assert all(
        count <= PER_REGISTRATION
        for key, count in watch.most.items()
        if key.startswith(slots.REGISTRATION)
    ), watch.most


def slow_receiver(receiver: Any) -> Receiver:
    server: Receiver = receiver(lambda request, n: Reply(delay=ANSWER_AFTER))
    return server


def test_two_celery_workers_keep_to_the_caps_together(
    web: Host,  # noqa: F811
    celery_worker: Any,
    receiver: Any,
    celery_env: dict[str, str],  # noqa: F811
) -> None:
    server = slow_receiver(receiver)
    start_engines(web, [celery_worker(), celery_worker()])
    send_through_two_engines(web, server, celery_env["KWT_DATABASE_URI"])


def test_two_worker_processes_keep_to_the_caps_together(
    make_host: Any, thread_worker: Any, receiver: Any
) -> None:
    host = make_host("postgres", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    server = slow_receiver(receiver)
    database = host.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"]
    thread_worker(database)
    thread_worker(database)
    send_through_two_engines(host, server, database)


# Hanging registrations ----------------------------------------------------------------------

#: Seconds after which an attempt to a hanging receiver times out.
TIMEOUT = 5.0


@pytest.mark.parametrize(
    ("hanging", "within"),
    [
        # One: it never has more than its cap of the host's slots, anywhere; the healthy one
        # is never held up, not even before the first attempt times out.
        (1, TIMEOUT - 1.5),
        # Three: until their first attempts time out they may fill the host (each process
        # judges its own share of it); from then on they hold one slot each at most, half the
        # host in all, in every process, and the healthy one's work flows.
        (3, TIMEOUT + 2),
    ],
)
def test_hanging_registrations_do_not_hold_up_a_healthy_one_on_the_same_host(
    web: Host,  # noqa: F811
    celery_worker: Any,
    receiver: Any,
    hanging: int,
    within: float,
) -> None:
    server: Receiver = receiver()  # it never answers the hanging ones (until the test ends)
    server.responder = lambda request, n: (
        Reply(wait=server.release) if request.path.startswith("/hang") else Reply()
    )
    hung = [register(web, server.url(f"/hang{n}"))["id"] for n in range(hanging)]
    healthy = [register(web, server.url("/healthy"))["id"]]
    config = {"KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": TIMEOUT, "KAIZEN_WEBHOOKS_CONNECT_TIMEOUT": 1}
    start_engines(web, [celery_worker(config=config), celery_worker(config=config)])
    began = time.monotonic()
    with web.app.app_context():
        for n in range(20):
            web.webhooks.trigger("profile_updated", {"n": n})
    wait_until(
        lambda: statuses(web, healthy) == Counter(succeeded=20), timeout=within, interval=0.05
    )
    print(f"\nthe healthy registration had its 20 deliveries in {time.monotonic() - began:.2f} s")
    assert statuses(web, hung)["succeeded"] == 0


# A worker killed mid-batch ------------------------------------------------------------------


def test_a_celery_worker_killed_mid_batch_sends_again_only_what_it_was_sending(
    web: Host,  # noqa: F811
    celery_worker: Any,
    receiver: Any,
) -> None:
    gate = threading.Event()
    server: Receiver = receiver()
    server.responder = lambda request, n: (
        Reply(wait=gate) if request.path == "/held" and not gate.is_set() else Reply()
    )
    answered = [register(web, server.url("/answered"))["id"]]
    register(web, server.url("/held"))
    doomed = celery_worker(config=RECOVERY)
    ids = committed_events(web, 10)
    with web.app.app_context():
        get_state().executor.submit(ids)  # one task carries the twenty
    # The answered ones are recorded; the held ones are under way, as many as their cap lets.
    wait_until(lambda: statuses(web, answered) == Counter(succeeded=10), timeout=30, interval=0.1)
    server.wait_for(10 + PER_REGISTRATION)
    doomed.process.kill()
    held = set(request_ids(server, "/held"))
    assert len(held) == PER_REGISTRATION
    gate.set()
    celery_worker(beat=True, config=RECOVERY)  # its sweep finds the work the dead one left
    wait_for_successes(web, 20, timeout=45)
    received = request_ids(server)
    assert set(received) == set(ids)
    twice = {request_id for request_id, count in received.items() if count > 1}
    assert twice <= held and max(received.values()) <= 2, received
