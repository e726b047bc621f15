"""The services restarted under load, with real processes only: the PostgreSQL server restarted
while thread-engine workers (``flask webhooks worker``) and Celery workers deliver a stream of
committed events, and the Redis server (Celery's broker) restarted while Celery workers do.

Every committed delivery arrives, nothing stays pending, the processes that ran before the
restart finish the job without being restarted, and each tells of the outage in a line or two,
without a traceback. Every address is on 127.0.0.1, and the services run again at the end
whatever happens. A restart cuts off every client of the server, other test runs' too: there is
one restart of each server, of a few seconds."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jose.jws
import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from flask_kaizen_webhooks import KaizenWebhooks, get_state
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import DELIVERY_CONFIG, Host, install_demo_auth, register, service_unavailable
from tests.processes import (
    HostProcess,
    celery_worker_command,
    delivered_by,
    host_environment,
    python,
)
from tests.receivers import Receiver, Reply, wait_until

pytest.importorskip("celery", reason="the celery extra is not installed")

# They cut off every other test's connections: `make test` runs them alone, after the rest.
pytestmark = pytest.mark.exclusive

REDIS_URL = os.environ.get("KAIZEN_WEBHOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LOCAL = {"127.0.0.1", "localhost", "::1"}
#: Seconds between two commits of the stream (each commit: one event, two deliveries).
EVERY = 0.05
#: Seconds each receiver takes to answer: attempts are under way when a service goes down.
ANSWER_DELAY = 0.05
#: Seconds the stream goes on once the service is back.
AFTER = 3.0
#: Seconds within which every committed delivery has arrived once the service is back.
SETTLED_WITHIN = 25.0
#: The product's lines on an outage (see ``flask_kaizen_webhooks.delivery.outage``).
TOLD = re.compile(r" unavailable|is available again")
#: Celery's consumer's lines on losing its broker and connecting again.
RECONNECTING = re.compile(r"Connection to broker lost|Cannot connect to")
#: The most lines a worker process writes in one of these tests: its start, a warning or two
#: of Celery's, and its telling of the outage.
MOST_LINES = 50


# The services -----------------------------------------------------------------------------------


@dataclass
class Downtime:
    """When a service went down and came back (``time.time()``)."""

    began: float
    ended: float = 0.0


@dataclass(frozen=True)
class Postgres:
    """The local PostgreSQL cluster of the tests' database."""

    version: str
    cluster: str
    port: int

    def command(self, action: str) -> list[str]:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.cluster, action]

    def ready(self) -> bool:
        ready = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(ready, check=False, timeout=10).returncode == 0

    @contextlib.contextmanager
    def restarted(self) -> Iterator[Downtime]:
        """Restart the server (its clients cut off at once, as ``pg_ctlcluster`` does by
        default), then the block runs; whatever happens, the server runs at the end."""
        downtime = Downtime(time.time())
        try:
            subprocess.run(self.command("restart"), check=True, timeout=60, capture_output=True)
            wait_until(self.ready, timeout=30, interval=0.05)
            downtime.ended = time.time()
            yield downtime
        finally:
            if not self.ready():
                subprocess.run(self.command("start"), check=False, timeout=60)
                wait_until(self.ready, timeout=30, interval=0.2)


def local_postgres(url: str) -> Postgres:
    """The local cluster serving ``url``, which this process may restart; skips otherwise."""
    address = make_url(url)
    port = address.port or 5432
    if address.host not in LOCAL:
        service_unavailable(f"PostgreSQL at {address.host} is not on this machine")
    for tool in ("pg_ctlcluster", "pg_lsclusters", "pg_isready"):
        if shutil.which(tool) is None:
            service_unavailable(f"{tool} is not installed: PostgreSQL cannot be restarted")
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    ).stdout
    for line in listed.splitlines():
        version, cluster, cluster_port, status, owner, *_ = line.split()
        if int(cluster_port) == port and status == "online":
            if os.geteuid() != 0 and owner != os.environ.get("USER"):
                service_unavailable(f"PostgreSQL {version}/{cluster} is not ours to restart")
            return Postgres(version, cluster, port)
    service_unavailable(f"no local PostgreSQL cluster runs on port {port}")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Redis:
    """The local Redis server of the tests, which keeps nothing on disk."""

    port: int
    #: How it was started (as CI starts it), to start it again the same way.
    start_command: list[str]

    def ping(self) -> bool:
        ping = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "ping"]
        done = subprocess.run(ping, capture_output=True, text=True, check=False, timeout=10)
        return done.stdout.strip() == "PONG"

    @contextlib.contextmanager
    def stopped(self) -> Iterator[Downtime]:
        """Shut the server down, losing what it holds, while the block runs; then start it
        again with the same command. Whatever happens, it runs at the end."""
        downtime = Downtime(time.time())
        try:
            shutdown = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "shutdown", "nosave"]
            subprocess.run(shutdown, check=False, capture_output=True, timeout=10)
            wait_until(lambda: not self.ping(), timeout=10, interval=0.05)
            yield downtime
        finally:
            if not self.ping():
                subprocess.run(self.start_command, check=True, timeout=30, capture_output=True)
                wait_until(self.ping, timeout=30, interval=0.05)
            downtime.ended = time.time()


def local_redis(url: str) -> Redis:
    """The local Redis server at ``url``, keeping nothing on disk and run as a daemon, which
    this process may stop and start again with the settings it runs with; skips otherwise."""
    import redis

    address = urlsplit(url)
    port = address.port or 6379
    if address.hostname not in LOCAL:
        service_unavailable(f"Redis at {address.hostname} is not on this machine")
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            service_unavailable(f"{tool} is not installed: Redis cannot be restarted")
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=3, decode_responses=True
    )
    config: dict[str, str] = {}
    try:
        for name in ("bind", "dir", "logfile", "save", "appendonly"):
            config.update(client.config_get(name))
    except redis.RedisError as exc:
        service_unavailable(f"Redis is not reachable at 127.0.0.1:{port}: {exc}")
    finally:
        client.close()
    if config["save"] or config["appendonly"] != "no":
        service_unavailable("this Redis keeps its data on disk: not ours to restart")
    if not config["logfile"]:
        service_unavailable("this Redis logs to a terminal: it was not started as a daemon")
    command = ["redis-server", "--daemonize", "yes", "--bind", *config["bind"].split()]
    command += ["--port", str(port), "--save", "", "--appendonly", "no"]
    command += ["--dir", config["dir"], "--logfile", config["logfile"]]
    return Redis(port, command)


def redis_reachable(url: str) -> None:
    """Skip unless the Redis server at ``url`` answers."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis is not reachable at {url}: {exc}")
    finally:
        client.close()


# The web side: this process ---------------------------------------------------------------------


@contextlib.contextmanager
def new_database(postgres_url: str) -> Iterator[str]:
    """The URL of a new database on the server of ``postgres_url``, dropped at the end."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"kaizen_webhooks_restarts_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def thread_web_host(database_url: str) -> Host:
    """The web side of ``tests.restart_host``'s workers: the extension in the host's database,
    through Flask-SQLAlchemy (whose pool pings its connections, so that this process outlives
    the restart); it leaves the sending to the workers."""
    app = Flask("restart_web")
    app.config.update(
        SECRET_KEY="restart-host-secret-key",
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        KAIZEN_WEBHOOKS_EXECUTOR="none",
        **DELIVERY_CONFIG,
    )
    db = SQLAlchemy()
    db.init_app(app)
    webhooks = KaizenWebhooks(app, db=db)
    install_demo_auth(webhooks)
    return Host(app, webhooks, db)


def celery_web_host(database_url: str, queue: str, monkeypatch: pytest.MonkeyPatch) -> Host:
    """The web side of ``tests.celery_host``: it commits events in its embedded database (whose
    pool pings its connections) and hands them to Celery."""
    from tests.celery_host import create_host

    monkeypatch.setenv("KWT_DATABASE_URI", database_url)
    monkeypatch.setenv("KWT_BROKER", REDIS_URL)
    monkeypatch.setenv("KWT_QUEUE", queue)
    app, webhooks = create_host()
    return Host(app, webhooks, None)


def closed_at_the_end(stack: contextlib.ExitStack, host: Host) -> Host:
    def close() -> None:
        with host.app.app_context():
            get_state(host.app).shutdown(timeout=5)
            get_state(host.app).database.dispose()
            if host.db is not None:
                host.db.session.remove()
                host.db.engine.dispose()

    stack.callback(close)
    return host


@dataclass
class Stream:
    """Commits an event in each host every :data:`EVERY` seconds, on a thread of its own, until
    stopped. A commit that fails (the database is down) is not tried again."""

    hosts: list[Host]
    #: The deliveries whose commit returned, with when (``time.time()``).
    committed: dict[str, float] = field(default_factory=dict)
    #: The name of the app that committed each.
    committed_by: dict[str, str] = field(default_factory=dict)
    #: The errors of the commits that failed, by type.
    errors: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "a commit hangs"

    def of(self, host: Host) -> set[str]:
        """The deliveries ``host`` committed."""
        return {i for i, name in self.committed_by.items() if name == host.app.name}

    def between(self, since: float, until: float) -> set[str]:
        return {i for i, at in self.committed.items() if since < at < until}

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(EVERY):
            n += 1
            for host in self.hosts:
                try:
                    with host.app.app_context():
                        ids = host.webhooks.trigger("profile_updated", {"n": n})
                except Exception as exc:
                    self.errors[type(exc).__name__] += 1
                    continue
                now = time.time()
                for delivery_id in map(str, ids):
                    self.committed[delivery_id] = now
                    self.committed_by[delivery_id] = host.app.name


def statuses(database_url: str) -> Counter[str]:
    """How many deliveries are in each status, read on a connection of its own."""
    engine = create_engine(database_url, pool_pre_ping=True)
    try:
        with engine.connect() as connection:
            return Counter(str(status) for status in connection.scalars(select(Delivery.status)))
    finally:
        engine.dispose()


def delivery_ids(database_url: str) -> set[str]:
    engine = create_engine(database_url, pool_pre_ping=True)
    try:
        with engine.connect() as connection:
            return set(connection.scalars(select(Delivery.id)))
    finally:
        engine.dispose()


def arrivals(server: Receiver) -> dict[str, list[float]]:
    """When each delivery reached ``server`` (``time.time()``), by webhook_request_id."""
    found: dict[str, list[float]] = {}
    for request in server.received:
        claims = json.loads(jose.jws.get_unverified_claims(request.body.decode()))
        found.setdefault(claims["webhook_request_id"], []).append(request.at)
    return found


def assert_every_delivery_arrived(
    database_url: str, server: Receiver, committed: set[str], downtime: Downtime
) -> None:
    """Every delivery in ``database_url`` (``committed`` among them: the commits that returned)
    succeeded and reached ``server``; none twice, unless its attempt was under way when the
    service went down."""
    assert set(statuses(database_url)) == {"succeeded"}
    in_database = delivery_ids(database_url)
    assert committed <= in_database
    arrived = arrivals(server)
    assert set(arrived) == in_database
    twice = {i: times for i, times in arrived.items() if len(times) > 1}
    unexplained = {
        i: times
        for i, times in twice.items()
        if len(times) > 2 or not downtime.began - 1.0 <= times[0] <= downtime.ended
    }
    assert not unexplained, f"sent twice, with no attempt under way at the restart: {unexplained}"
    print(f"{len(arrived)} deliveries arrived, {len(twice)} of them twice")


# The worker processes ---------------------------------------------------------------------------


def stopped_at_the_end(stack: contextlib.ExitStack, process: HostProcess) -> HostProcess:
    """Stop ``process`` when ``stack`` closes, and print what it wrote (shown on failure)."""

    def stop() -> None:
        process.stop()
        print(f"--- {' '.join(map(str, process.process.args))}:\n{process.output}")

    stack.callback(stop)
    return process


def thread_worker(database_url: str, notes: Path) -> HostProcess:
    """``flask webhooks worker`` on ``tests.restart_host``, whose Flask-SQLAlchemy engine is
    made as the quickstart makes it: its connections are not pinged before use."""
    env = host_environment(
        KWT_DATABASE_URI=database_url,
        KWT_CONFIG=json.dumps({**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_POLL_INTERVAL": 0.2}),
        KWT_DELIVERED=str(notes),
    )
    command = [python(), "-m", "flask", "--app", "tests.restart_host", "webhooks", "worker"]
    process = HostProcess(command, env, listening=None)
    process.wait_for_output("Sending webhooks")
    return process


def celery_worker(
    database_url: str,
    queue: str,
    notes: Path,
    name: str,
    *,
    beat: Path | None = None,
    **config: Any,
) -> HostProcess:
    """A Celery worker process on ``tests.celery_host`` with two threads for tasks, and beat
    (its schedule kept in ``beat``) if given."""
    env = host_environment(
        KWT_DATABASE_URI=database_url,
        KWT_BROKER=REDIS_URL,
        KWT_QUEUE=queue,
        KWT_CONFIG=json.dumps(config),
        KWT_DELIVERED=str(notes),
        KWT_TASKS=f"{notes}.tasks",
    )
    command = celery_worker_command(name, beat=beat, quiet=True)
    return HostProcess(command, env, listening=None)


#: What a Celery worker says when kombu's Redis transport fails to close a channel whose
#: connection is gone, and the worker ends (kombu 5.7; celery/kombu#970 and #582 are kin).
KOMBU_CLOSE_FAILURE = (
    "Unrecoverable error: AttributeError(\"'NoneType' object has no attribute 'hostname'\")"
)


def tasks_run(notes: Path) -> list[tuple[int, float]]:
    """The tasks the Celery workers ran: (pid, when), from ``tests.celery_host.note_tasks``."""
    path = Path(f"{notes}.tasks")
    if not path.exists():
        return []
    return [
        (int(pid), float(at)) for pid, at, _name in map(str.split, path.read_text().splitlines())
    ]


def wait_for_work_from(
    pids: list[int], notes: Path, ids: Callable[[], set[str]], timeout: float
) -> None:
    """Wait until each process of ``pids`` has sent at least one delivery of ``ids()``."""

    def each_sent() -> bool:
        senders = delivered_by(notes)
        wanted = ids()
        return all(any(pid in senders.get(i, ()) for i in wanted) for pid in pids)

    wait_until(each_sent, timeout=timeout, interval=0.1)


def assert_told_briefly(
    process: HostProcess, name: str, *, told: tuple[int, int], reconnecting: tuple[int, int]
) -> None:
    """``process`` still runs, wrote no traceback, told of the outage in ``told`` lines (at
    least, at most) and Celery's consumer of losing its broker in ``reconnecting`` lines."""
    output = process.read_output()
    # Each attempt's own line (INFO) aside: what counts is how the outage was told.
    lines = [line for line in output.splitlines() if "Webhook attempt " not in line]
    assert process.process.poll() is None, f"{name} exited:\n{output}"
    assert "Traceback" not in output, f"{name} wrote a traceback:\n{output}"
    said = [line for line in lines if TOLD.search(line)]
    assert told[0] <= len(said) <= told[1], f"{name} told of the outage in:\n{output}"
    if said:
        assert "unavailable" in said[0] and "available again" in said[-1], said
    said = [line for line in lines if RECONNECTING.search(line)]
    assert reconnecting[0] <= len(said) <= reconnecting[1], f"{name}'s Celery wrote:\n{output}"
    assert len(lines) <= MOST_LINES, f"{name} wrote {len(lines)} lines:\n{output}"


@pytest.fixture
def redis_queue() -> Iterator[str]:
    """A queue of the test's own on the Redis server, removed at the end."""
    import redis

    queue = f"kaizen-webhooks-restarts-{uuid.uuid4().hex[:8]}"
    yield queue
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    with contextlib.suppress(redis.RedisError):
        client.delete(queue)
    client.close()


def delayed_receiver(stack: contextlib.ExitStack) -> Receiver:
    server = Receiver(lambda request, n: Reply(delay=ANSWER_DELAY))
    stack.callback(server.close)
    return server


# The tests --------------------------------------------------------------------------------------


def test_a_postgres_restart_loses_nothing_and_stops_no_worker(
    postgres_url: str, redis_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres = local_postgres(postgres_url)
    redis_reachable(REDIS_URL)  # the Celery workers' broker
    notes = tmp_path / "delivered"
    with contextlib.ExitStack() as stack:
        # Each kind of worker has a database of its own, on the same server.
        thread_url = stack.enter_context(new_database(postgres_url))
        celery_url = stack.enter_context(new_database(postgres_url))
        thread_web = closed_at_the_end(stack, thread_web_host(thread_url))
        celery_web = closed_at_the_end(stack, celery_web_host(celery_url, redis_queue, monkeypatch))
        receivers = {thread_url: delayed_receiver(stack), celery_url: delayed_receiver(stack)}
        for web, server in zip((thread_web, celery_web), receivers.values(), strict=True):
            register(web, server.url("/a"))
            register(web, server.url("/b"))
        # One Celery worker runs beat too, whose sweep reads the database every second.
        workers = {
            "thread worker 1": thread_worker(thread_url, notes),
            "thread worker 2": thread_worker(thread_url, notes),
            "celery worker 1": celery_worker(
                celery_url,
                redis_queue,
                notes,
                "a",
                beat=tmp_path / "beat",
                KAIZEN_WEBHOOKS_CELERY_SWEEP_INTERVAL=1,
            ),
            "celery worker 2": celery_worker(celery_url, redis_queue, notes, "b"),
        }
        for process in workers.values():
            stopped_at_the_end(stack, process)
        pids = [process.process.pid for process in workers.values()]

        stream = Stream([thread_web, celery_web])
        stream.start()
        stack.callback(stream.stop)
        wait_for_work_from(pids, notes, lambda: set(stream.committed), timeout=30)
        with postgres.restarted() as downtime:
            print(f"PostgreSQL restarted in {downtime.ended - downtime.began:.1f} s")
        # The same processes send what is committed after the restart.
        after = lambda: stream.between(downtime.ended, time.time())  # noqa: E731
        wait_for_work_from(pids, notes, after, timeout=SETTLED_WITHIN)
        time.sleep(max(0.0, downtime.ended + AFTER - time.time()))
        stream.stop()
        assert stream.errors, "no commit met the restart"
        print(f"commits that failed: {dict(stream.errors)}")

        for url in receivers:
            wait_until(lambda url=url: set(statuses(url)) == {"succeeded"}, timeout=SETTLED_WITHIN)
        print(f"all delivered {time.time() - downtime.ended:.1f} s after the restart")
        for web, (url, server) in zip((thread_web, celery_web), receivers.items(), strict=True):
            assert_every_delivery_arrived(url, server, stream.of(web), downtime)
        for name, process in workers.items():
            # A line when the database went away and one when it was back (two, if it failed
            # again for a moment), whichever part of the engine met it.
            assert_told_briefly(process, name, told=(2, 4), reconnecting=(0, 0))


def test_a_redis_restart_loses_nothing_and_the_same_workers_take_tasks_again(
    postgres_url: str,
    redis_queue: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis

    broker = local_redis(REDIS_URL)
    notes = tmp_path / "delivered"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(new_database(postgres_url))
        web = closed_at_the_end(stack, celery_web_host(url, redis_queue, monkeypatch))
        server = delayed_receiver(stack)
        register(web, server.url("/a"))
        register(web, server.url("/b"))
        # The engines look for due work once a second (the default) between their tasks.
        config = {
            "KAIZEN_WEBHOOKS_POLL_INTERVAL": 1.0,
            "KAIZEN_WEBHOOKS_CELERY_SWEEP_INTERVAL": 5,
        }
        starts = {
            "celery worker 1": lambda: celery_worker(
                url, redis_queue, notes, "a", beat=tmp_path / "beat", **config
            ),
            "celery worker 2": lambda: celery_worker(url, redis_queue, notes, "b", **config),
        }
        workers = {name: stopped_at_the_end(stack, start()) for name, start in starts.items()}
        pids = [process.process.pid for process in workers.values()]

        stream = Stream([web])
        stream.start()
        stack.callback(stream.stop)
        wait_for_work_from(pids, notes, lambda: set(stream.committed), timeout=30)
        with broker.stopped() as downtime:
            time.sleep(2.0)  # events are committed meanwhile; their tasks cannot be sent
        print(f"Redis was down for {downtime.ended - downtime.began:.1f} s")
        # kombu's Redis transport, closing a channel whose message's ack the outage cut, may
        # end its worker ("Unrecoverable error", in kombu, not here). Nothing is lost; its
        # supervisor starts it again, as here, and it takes tasks with the other.
        started_again = set()
        for name, process in workers.items():
            if KOMBU_CLOSE_FAILURE in process.read_output():
                process.process.wait(30)
                print(f"{name} was ended by kombu's close of its channel; started again")
                workers[name] = stopped_at_the_end(stack, starts[name]())
                started_again.add(name)
        pids = [process.process.pid for process in workers.values()]
        # Each worker takes tasks again (its consumer connected anew), and sends.
        after = lambda: stream.between(downtime.ended, time.time())  # noqa: E731
        wait_until(
            lambda: {pid for pid, at in tasks_run(notes) if at > downtime.ended} == set(pids),
            timeout=SETTLED_WITHIN,
            interval=0.1,
        )
        wait_for_work_from(pids, notes, after, timeout=SETTLED_WITHIN)
        time.sleep(max(0.0, downtime.ended + AFTER - time.time()))
        stream.stop()
        assert not stream.errors, stream.errors
        assert stream.between(downtime.began, downtime.ended), "nothing committed while down"

        wait_until(lambda: set(statuses(url)) == {"succeeded"}, timeout=SETTLED_WITHIN)
        print(f"all delivered {time.time() - downtime.ended:.1f} s after the restart")
        assert_every_delivery_arrived(url, server, stream.of(web), downtime)
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        wait_until(lambda: client.llen(redis_queue) == 0, timeout=10)  # every task taken
        client.close()
        for name, process in workers.items():
            if name in started_again:
                continue  # it did not live through the outage
            # Celery's consumer: the connection lost, then a line per try until it is back.
            assert_told_briefly(process, name, told=(0, 2), reconnecting=(1, 6))
        # The web side (this process) told of the broker's outage in a line or two as well.
        told = [r for r in caplog.records if "Celery's broker" in r.getMessage()]
        assert 1 <= len(told) <= 2 and not any(r.exc_info for r in told), told
