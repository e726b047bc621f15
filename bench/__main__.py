"""``python -m bench [--quick]``: measure flask-kaizen-webhooks beside its baselines.

Prints a table, then one line of JSON. Every figure comes from this run on this machine; the
ratios are what to compare across machines. Traffic goes only to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pycurl
import requests
import urllib3
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import func, insert, select

from bench.backlog import backlog_figures
from flask_kaizen_webhooks import KaizenWebhooks, get_state, signals
from flask_kaizen_webhooks.signing import encode_payload, sign
from flask_kaizen_webhooks.storage import registrations
from flask_kaizen_webhooks.storage.tables import Delivery, DeliveryStatus, Registration

SECRET = "benchmark_secret_0123"
PAYLOAD = {
    "auditLog": [],
    "id": "p-1",
    "email": "john@doe.com",
    "rev": "2-abc",
    "firstName": "John",
    "lastName": "Doe",
    "userFields": [],
}
#: Rounds of the throughput figures.
ROUNDS = 3
POSTGRES = os.environ.get(
    "KAIZEN_WEBHOOKS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def fast_receiver() -> Iterator[str]:
    """The receiver in its own process; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.receiver", "0"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = int(process.stdout.readline().split()[1])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def rate(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def raw_ceiling(url: str, count: int) -> float:
    """Pre-signed bodies over one keep-alive urllib3 pool in a tight loop."""
    pool = urllib3.PoolManager(maxsize=1)
    body = sign(encode_payload(PAYLOAD), SECRET).encode()

    def loop() -> None:
        for _ in range(count):
            response = pool.request(
                "POST", f"{url}/raw", body=body, headers={"Content-Type": "application/jose"}
            )
            assert response.status == 200

    return rate(count, loop)


def curl_ceiling(url: str, count: int, at_once: int = 8) -> float:
    """Pre-signed bodies through one libcurl multi handle, ``at_once`` transfers at a time, in a
    tight loop on this thread: what libcurl itself can do here."""
    body = sign(encode_payload(PAYLOAD), SECRET).encode()
    multi = pycurl.CurlMulti()
    handles = []
    for _ in range(at_once):
        handle = pycurl.Curl()
        handle.setopt(pycurl.URL, f"{url}/curl")
        handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.HTTPHEADER, ["Content-Type: application/jose", "Expect:"])
        handle.setopt(pycurl.WRITEFUNCTION, lambda data: None)
        handles.append(handle)

    def loop() -> None:
        started = finished = 0
        for handle in handles[:count]:
            multi.add_handle(handle)
            started += 1
        while finished < count:
            multi.select(1.0)
            while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, succeeded, failed = multi.info_read()
                for handle in [*succeeded, *(entry[0] for entry in failed)]:
                    assert handle.getinfo(pycurl.RESPONSE_CODE) == 200
                    finished += 1
                    multi.remove_handle(handle)
                    if started < count:
                        multi.add_handle(handle)
                        started += 1
                if not queued:
                    break

    try:
        return rate(count, loop)
    finally:
        for handle in handles:
            handle.close()
        multi.close()


def naive(url: str, count: int) -> float:
    """What a host writes by hand: ``requests.post`` of a freshly signed JWS per webhook."""
    from jose import jws

    def loop() -> None:
        for n in range(count):
            token = jws.sign({**PAYLOAD, "n": n}, SECRET, algorithm="HS256")
            assert requests.post(f"{url}/naive", data=token, timeout=10).status_code == 200

    return rate(count, loop)


def host_app(database_uri: str, **config: Any) -> tuple[Flask, KaizenWebhooks]:
    app = Flask("bench", instance_path=tempfile.mkdtemp())
    app.config.update(
        SECRET_KEY="bench",
        KAIZEN_WEBHOOKS_DATABASE_URI=database_uri,
        KAIZEN_WEBHOOKS_ALLOW_HTTP=True,
        KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.1/32"],
        KAIZEN_WEBHOOKS_POLL_INTERVAL=0.05,
        **config,
    )
    webhooks = KaizenWebhooks(app)
    with app.app_context():
        get_state().database.drop_tables()
    return app, webhooks


def add_registrations(app: Flask, url: str, count: int, topic: str, query: str = "") -> None:
    with app.app_context():
        state = get_state()
        session = state.database.session
        for n in range(count):
            registrations.create_registration(
                session,
                owner="bench",
                topic=topic,
                url=f"{url}/{n}{query}",
                sealed_secret=state.secrets.seal(SECRET),
            )
        session.commit()


def succeeded(app: Flask) -> int:
    with app.app_context(), get_state().database.independent_session() as session:
        query = (
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.status == DeliveryStatus.SUCCEEDED)
        )
        return int(session.scalar(query) or 0)


def async_throughput(
    url: str,
    database_uri: str,
    events: int,
    registrations: int,
    *,
    metrics: bool = True,
    cpu: list[float] | None = None,
) -> float:
    """Events fired by the host, each delivery signed, sent and recorded; first event to last
    recorded success (``delivery_succeeded`` is sent once a success is committed). Prometheus
    metrics are counted unless ``metrics`` is False. The CPU this process spent per delivery
    meanwhile (microseconds) goes to ``cpu``."""
    app, webhooks = host_app(database_uri, KAIZEN_WEBHOOKS_METRICS=metrics)
    add_registrations(app, url, registrations, "profile_updated")
    total = events * registrations
    done = threading.Event()
    recorded: list[str] = []

    def count(_app: Flask, **fields: Any) -> None:
        recorded.append(fields["delivery_id"])
        if len(recorded) >= total:
            done.set()

    signals.delivery_succeeded.connect(count, sender=app)
    webhooks.start(app)
    started, cpu_started = time.perf_counter(), time.process_time()
    with app.app_context():
        for n in range(events):
            signals.profile_updated.send(app, payload={**PAYLOAD, "n": n})
    if not done.wait(600):
        raise RuntimeError(f"only {len(recorded)} of {total} deliveries succeeded in 10 minutes")
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append((time.process_time() - cpu_started) / total * 1e6)
    webhooks.shutdown(app)
    signals.delivery_succeeded.disconnect(count, sender=app)
    assert succeeded(app) == total  # every success is in the database
    return total / elapsed


def portal_page_ms(database_uri: str, deliveries: int, samples: int) -> float:
    """The median time (ms) of an endpoint's page in the portal, its newest deliveries first,
    when the endpoint has ``deliveries`` deliveries; read through the app, as a browser asks."""
    app, webhooks = host_app(database_uri, KAIZEN_WEBHOOKS_EXECUTOR="none")
    add_registrations(app, "http://127.0.0.1:9", 1, "profile_updated")
    with app.app_context():
        state = get_state()
        registration_id = state.database.session.scalars(select(Registration.id)).one()
        started = datetime(2026, 1, 1, tzinfo=UTC)
        rows = [
            {
                "id": str(uuid.UUID(int=n)),
                "registration_id": registration_id,
                "owner": "bench",
                "topic": "profile_updated",
                "mode": "async",
                "payload": json.dumps(PAYLOAD),
                "status": DeliveryStatus.SUCCEEDED,
                "attempts": 1,
                "retry_index": 0,
                "created_at": started + timedelta(seconds=n),
                "updated_at": started + timedelta(seconds=n),
            }
            for n in range(deliveries)
        ]
        with state.database.writing() as session:
            session.execute(insert(Delivery), rows)
        link = webhooks.portal_link("bench", base_url="http://localhost")
    client = app.test_client()
    client.get(link.url.removeprefix("http://localhost"))
    page = f"{app.config['KAIZEN_WEBHOOKS_URL_PREFIX']}/portal/endpoints/{registration_id}"
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        answer = client.get(page)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200
    webhooks.shutdown(app)
    return statistics.median(times)


REDIS = os.environ.get("KAIZEN_WEBHOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def median_of(runs: list[Any], field: str) -> float | None:
    """The median of ``field`` over ``runs``, or None when there are none."""
    return statistics.median(getattr(run, field) for run in runs) if runs else None


def process_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` has used (user and system)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """This machine's CPU seconds so far: (busy, all), over every core."""
    with open("/proc/stat") as stat:
        ticks = [int(n) for n in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


#: Seconds the receiver of the ``*_20ms_receiver`` rows takes to answer, as a receiver across
#: a network does.
ANSWER_IN = 0.02
#: The caps of those rows: a receiver known to be fast (the defaults, 2 and 4, would make
#: them measure the caps).
FAST_RECEIVER_CAPS = {
    "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 8,
    "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_HOST": 64,
}


@dataclass
class CeleryRun:
    """One run of the Celery executor: deliveries/s, the CPU the worker processes spent per
    delivery, and how busy the machine's cores were meanwhile."""

    per_s: float
    worker_cpu_us: float
    machine_busy_pct: float


def celery_throughput(
    url: str, events: int, registrations: int, workers: int, *, answer_in: float = 0.0
) -> CeleryRun | None:
    """``async_per_s`` on the Celery executor: ``workers`` Celery worker processes (one engine
    each) on PostgreSQL and Redis; None when Celery, Redis or PostgreSQL is missing. With
    ``answer_in``, the receiver answers after that many seconds, and the caps are raised to
    what a receiver known to be fast would be given (:data:`FAST_RECEIVER_CAPS`)."""
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except Exception:
        return None
    if not postgres_available():
        return None
    os.environ.update(
        BENCH_DATABASE_URI=POSTGRES,
        BENCH_BROKER=REDIS,
        BENCH_QUEUE=f"kaizen-webhooks-bench-{os.getpid()}",
        BENCH_INSTANCE=tempfile.mkdtemp(),
        BENCH_CONFIG=json.dumps(FAST_RECEIVER_CAPS if answer_in else {}),
    )
    from bench.celery_host import create_app

    app = create_app()
    with app.app_context():
        get_state(app).database.drop_tables()
    add_registrations(
        app, url, registrations, "profile_updated", f"?delay={answer_in}" if answer_in else ""
    )
    command = [sys.executable, "-m", "celery", "-A", "bench.celery_host:celery_app", "worker"]
    command += ["--pool=threads", "--concurrency=2", "--loglevel=WARNING"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    processes = [
        subprocess.Popen([*command, f"--hostname=bench{n}@%h"], env=os.environ.copy())
        for n in range(workers)
    ]
    try:
        with app.app_context():  # one event first: the workers are up once it is delivered
            signals.profile_updated.send(app, payload={**PAYLOAD, "n": -1})
        while succeeded(app) < registrations:
            time.sleep(0.05)
        total = (events + 1) * registrations
        cpu_before = sum(process_cpu(process.pid) for process in processes)
        busy_before, all_before = machine_cpu()
        started = time.perf_counter()
        with app.app_context():
            for n in range(events):
                signals.profile_updated.send(app, payload={**PAYLOAD, "n": n})
        while succeeded(app) < total:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        busy, every = machine_cpu()
        cpu = sum(process_cpu(process.pid) for process in processes) - cpu_before
        count = events * registrations
        return CeleryRun(
            count / elapsed,
            cpu / count * 1e6,
            100 * (busy - busy_before) / max(every - all_before, 1e-9),
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        get_state(app).shutdown()


def enqueue_host(url: str, metrics: bool) -> tuple[Flask, SQLAlchemy]:
    """A host with its own ``db`` and 10 registrations, whose web process only enqueues."""
    directory = tempfile.mkdtemp()
    app = Flask("bench-enqueue", instance_path=directory)
    app.config.update(
        SECRET_KEY="bench",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{directory}/h.db",
        KAIZEN_WEBHOOKS_ALLOW_HTTP=True,
        KAIZEN_WEBHOOKS_EXECUTOR="none",
        KAIZEN_WEBHOOKS_ALLOWED_NETWORKS=["127.0.0.1/32"],
        KAIZEN_WEBHOOKS_METRICS=metrics,
    )
    db = SQLAlchemy()
    db.init_app(app)
    KaizenWebhooks(app, db=db)
    add_registrations(app, url, 10, "profile_updated")
    return app, db


def enqueue_latency(url: str, samples: int) -> dict[bool, tuple[float, float]]:
    """Microseconds the host's request spends in the signal (10 registrations, host ``db``,
    inside its transaction, commit excluded): p50 and p99 with Prometheus metrics counted
    (True) and without (False), their samples taken in turns."""
    hosts = {metrics: enqueue_host(url, metrics) for metrics in (True, False)}
    timings: dict[bool, list[float]] = {True: [], False: []}
    order = [True, False, False, True]  # each goes first as often as the other
    for n in range(2 * samples):
        metrics = order[n % 4]
        app, db = hosts[metrics]
        with app.app_context():
            db.session.execute(select(1))  # the host's transaction is open
            started = time.perf_counter()
            signals.profile_updated.send(app, payload={**PAYLOAD, "n": n})
            timings[metrics].append((time.perf_counter() - started) * 1e6)
            db.session.commit()
    figures = {}
    for metrics, taken in timings.items():
        taken.sort()
        figures[metrics] = statistics.median(taken), taken[int(len(taken) * 0.99) - 1]
    return figures


def sync_walls(urls: list[str], samples: int) -> list[float]:
    """Seconds each of ``samples`` calls of a synchronous topic registered at ``urls`` took (after
    one call to warm up)."""
    app, webhooks = host_app(f"sqlite:///{tempfile.mkdtemp()}/s.db")
    with app.app_context():
        state = get_state()
        session = state.database.session
        for hook in urls:
            registrations.create_registration(
                session,
                owner="bench",
                topic="user_logged_in",
                url=hook,
                sealed_secret=state.secrets.seal(SECRET),
            )
        session.commit()
        webhooks.trigger("user_logged_in", {"warm": True})
        walls = []
        for _ in range(samples):
            started = time.perf_counter()
            results = webhooks.trigger("user_logged_in", {"user_id": "u"})
            walls.append(time.perf_counter() - started)
            assert all(r.ok for r in results), results  # type: ignore[union-attr]
    webhooks.shutdown(app)
    return walls


def sync_fanout(url: str) -> float:
    """Five registrations whose receivers take 200 ms each: wall time / 200 ms."""
    return statistics.median(sync_walls([f"{url}/slow{n}?delay=0.2" for n in range(5)], 5)) / 0.2


def sync_overhead(url: str, samples: int) -> float:
    """Milliseconds a synchronous topic with five receivers that answer at once takes the host
    (median): signing, sending, reading the answers, handing the delivery log over."""
    return statistics.median(sync_walls([f"{url}/fast{n}" for n in range(5)], samples)) * 1000


def pending_rss(count: int) -> float:
    """Resident memory growth (MiB) of a process holding ``count`` pending deliveries."""
    code = f"""
import os, tempfile, sys
sys.path.insert(0, {os.getcwd()!r})
from bench.__main__ import host_app, add_registrations
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
app, webhooks = host_app("sqlite:///" + tempfile.mkdtemp() + "/p.db")
add_registrations(app, "http://127.0.0.1:9", 10, "profile_updated")
before = rss_kib()
with app.app_context():
    for n in range({count} // 10):
        webhooks.trigger("profile_updated", {{"n": n}})
webhooks.start(app)  # the dispatcher runs; the receiver is down, so all stay pending
import time; time.sleep(2)
after = rss_kib()
webhooks.shutdown(app, 5)
print((after - before) / 1024)
"""
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=1800
    ).stdout
    return float(output.strip().splitlines()[-1])


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES.replace("+psycopg", ""), connect_timeout=3).close()
        return True
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    args = parser.parse_args()
    n = 500 if args.quick else 3000
    events = 50 if args.quick else 300
    figures: dict[str, Any] = {}
    rounds: dict[str, list[float]] = {
        "ceiling": [],
        "curl": [],
        "naive": [],
        "async": [],
        "async_metrics_off": [],
        "cpu": [],
        "cpu_metrics_off": [],
        "postgres": [],
    }
    with fast_receiver() as url:
        # Rounds of each, one after the other, and the medians: a burst of noise on this
        # shared machine then spoils one round, not a figure.
        with_postgres = postgres_available()
        celery_rounds: dict[int, list[CeleryRun]] = {1: [], 2: []}
        celery_answering_rounds: dict[int, list[CeleryRun]] = {1: [], 2: []}
        for number in range(ROUNDS):
            rounds["ceiling"].append(raw_ceiling(url, n))
            rounds["curl"].append(curl_ceiling(url, 4 * n))
            rounds["naive"].append(naive(url, n // 2))
            # With and without metrics, in turns first: neither gains from going second.
            for metrics in (True, False) if number % 2 == 0 else (False, True):
                uri = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
                cpu = rounds["cpu" if metrics else "cpu_metrics_off"]
                rounds["async" if metrics else "async_metrics_off"].append(
                    async_throughput(url, uri, events, 10, metrics=metrics, cpu=cpu)
                )
            if with_postgres:
                rounds["postgres"].append(async_throughput(url, POSTGRES, events, 10))
                for workers in (1, 2):  # beside the in-process engine of the same round
                    run = celery_throughput(url, events, 10, workers)
                    if run is not None:
                        celery_rounds[workers].append(run)
                    run = celery_throughput(url, events // 3, 10, workers, answer_in=ANSWER_IN)
                    if run is not None:
                        celery_answering_rounds[workers].append(run)
        figures["raw_ceiling_per_s"] = statistics.median(rounds["ceiling"])
        figures["curl_ceiling_per_s"] = statistics.median(rounds["curl"])
        figures["naive_per_s"] = statistics.median(rounds["naive"])
        figures["async_per_s"] = statistics.median(rounds["async"])
        figures["async_per_s_metrics_off"] = statistics.median(rounds["async_metrics_off"])
        figures["async_cpu_us_per_delivery"] = statistics.median(rounds["cpu"])
        figures["async_cpu_us_per_delivery_metrics_off"] = statistics.median(
            rounds["cpu_metrics_off"]
        )
        # The rounds' own ratios (on and off ran moments apart) of the CPU a delivery takes:
        # steadier than the throughputs, which this machine's noise moves by 10% and more.
        figures["metrics_cost_async_pct"] = 100 * (
            statistics.median(
                on / off for on, off in zip(rounds["cpu"], rounds["cpu_metrics_off"], strict=True)
            )
            - 1
        )
        figures["async_postgres_per_s"] = (
            statistics.median(rounds["postgres"]) if with_postgres else None
        )
        for workers, runs in celery_rounds.items():
            name = f"celery_{workers}_worker{'s' if workers > 1 else ''}"
            figures[f"{name}_postgres_per_s"] = median_of(runs, "per_s")
            figures[f"{name}_cpu_us_per_delivery"] = median_of(runs, "worker_cpu_us")
            figures[f"{name}_machine_busy_pct"] = median_of(runs, "machine_busy_pct")
        enqueue = enqueue_latency(url, 200 if args.quick else 1000)
        figures["enqueue_us_p50"], figures["enqueue_us_p99"] = enqueue[True]
        figures["enqueue_us_p50_metrics_off"] = enqueue[False][0]
        figures["metrics_cost_enqueue_pct"] = 100 * (enqueue[True][0] / enqueue[False][0] - 1)
        figures["sync_fanout_ratio"] = sync_fanout(url)
        figures["sync_overhead_ms_p50"] = sync_overhead(url, 100 if args.quick else 500)
        backlog_uri = POSTGRES if with_postgres else f"sqlite:///{tempfile.mkdtemp()}/backlog.db"
        figures.update(backlog_figures(url, backlog_uri, 1000 if args.quick else 5000))
    figures["pending_100k_rss_mb"] = pending_rss(10_000 if args.quick else 100_000)
    sqlite_uri = f"sqlite:///{tempfile.mkdtemp()}/portal.db"
    few, many = (
        portal_page_ms(sqlite_uri, count, 30 if args.quick else 100) for count in (100, 10_000)
    )
    figures["portal_page_ms_100_deliveries"] = few
    figures["portal_page_ms_10k_deliveries"] = many
    figures["portal_page_10k_to_100"] = many / few
    # Each round's ratio, then their median: the figures of a round ran moments apart.
    figures["ratio_to_ceiling"] = statistics.median(
        a / c for a, c in zip(rounds["async"], rounds["ceiling"], strict=True)
    )
    figures["ratio_to_curl_ceiling"] = statistics.median(
        a / c for a, c in zip(rounds["async"], rounds["curl"], strict=True)
    )
    if celery_rounds[1] and rounds["postgres"]:
        figures["celery_1_worker_to_async_postgres"] = statistics.median(
            c.per_s / a for c, a in zip(celery_rounds[1], rounds["postgres"], strict=False)
        )
    for workers, runs in celery_answering_rounds.items():
        name = f"celery_{workers}_worker{'s' if workers > 1 else ''}"
        figures[f"{name}_20ms_receiver_per_s"] = median_of(runs, "per_s")
    if celery_answering_rounds[1] and celery_answering_rounds[2]:
        figures["celery_2_workers_to_1_20ms_receiver"] = statistics.median(
            two.per_s / one.per_s
            for one, two in zip(
                celery_answering_rounds[1], celery_answering_rounds[2], strict=False
            )
        )
    if celery_rounds[1] and celery_rounds[2]:
        figures["celery_2_workers_to_1"] = statistics.median(
            two.per_s / one.per_s
            for one, two in zip(celery_rounds[1], celery_rounds[2], strict=False)
        )
    figures["ratio_to_naive"] = statistics.median(
        a / b for a, b in zip(rounds["async"], rounds["naive"], strict=True)
    )
    targets = {
        "ratio_to_ceiling": (">=", 0.6),
        "ratio_to_naive": (">=", 2),
        "enqueue_us_p50": ("<=", 500),
        "metrics_cost_async_pct": ("<=", 5),
        "metrics_cost_enqueue_pct": ("<=", 5),
        "sync_fanout_ratio": ("<=", 1.15),
        "sync_overhead_ms_p50": ("<=", 2),
        "pending_100k_rss_mb": ("<=", 50),
        "celery_1_worker_to_async_postgres": (">=", 0.5),
        "celery_2_workers_to_1": (">=", 1.3),
        "celery_2_workers_to_1_20ms_receiver": (">=", 1.3),
        "portal_page_10k_to_100": ("<=", 1.5),
        "backlog_drain_to_fixed_cap_2": (">=", 3),
    }
    print(f"{'figure':<34}{'value':>12}  target")
    for key, value in figures.items():
        target = targets.get(key)
        shown = "n/a" if value is None else f"{value:,.2f}"
        mark = ""
        if target is not None and value is not None:
            ok = value >= target[1] if target[0] == ">=" else value <= target[1]
            mark = f"{target[0]} {target[1]}  {'met' if ok else 'NOT met'}"
        print(f"{key:<34}{shown:>12}  {mark}")
    print(f"(throughputs: medians of {ROUNDS} rounds; ratios: medians of the rounds' ratios)")
    if args.quick:
        print("(quick run: pending_100k_rss_mb measured with 10,000 deliveries)")
    print(json.dumps({k: (None if v is None else round(v, 3)) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
