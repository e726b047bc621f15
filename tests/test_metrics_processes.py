"""Metrics scraped from real processes after real deliveries to receivers on 127.0.0.1: the demo
app, and on PostgreSQL gunicorn's two web workers writing the outbox with two ``flask webhooks
worker --metrics-port`` processes sending it, each process's scrape showing every process's
counts in prometheus-client's multiprocess mode, and its own without it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from tests import test_celery
from tests.conftest import DELIVERY_CONFIG, Host
from tests.conftest import register as conftest_register
from tests.migrating import empty
from tests.processes import (
    ROOT,
    HostProcess,
    celery_worker_command,
    host_environment,
    python,
    run_python,
)
from tests.receivers import Reply, wait_until
from tests.test_metrics import Samples, parse, value
from tests.test_restart import gunicorn_command

ADMIN = {"Authorization": "Bearer admin-token"}
SECRET = "signature_secret_0123"
TOPIC = "profile_updated"
EVENTS = 10
#: What the four receivers' attempts come to: answered, 500, hanging past the time limit, and
#: refused by the workers' address guard.
OUTCOMES = ("success", "5xx", "timeout", "refused")
# The Celery tests' fixtures: a queue of this test's own, and the web side on the Celery executor.
celery_env = test_celery.celery_env
web = test_celery.web


def scrape(url: str) -> Samples:
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    assert SECRET not in answer.text
    return parse(answer.text)


def forget_the_hosts_tables(url: str) -> None:
    """Leave the session's database as the other tests expect it: no table of the host's."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS restart_host_changes"))
    engine.dispose()
    empty(url)


def attempts(samples: Samples, outcome: str) -> float:
    return value(samples, "kaizen_webhooks_attempts_total", topic=TOPIC, outcome=outcome)


def register(base: str, url: str) -> str:
    answer = requests.post(
        f"{base}/v2/webhooks/registrations",
        json={"topic": TOPIC, "url": url, "secret": SECRET},
        headers=ADMIN,
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_the_demo_shows_its_metrics_after_a_delivery(tmp_path: Path, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply())
    command = [python(), "-m", "example_app", "--port", "0", "--instance-path", str(tmp_path)]
    demo = HostProcess(
        command, host_environment(), listening=r"Running on http://127\.0\.0\.1:(\d+)"
    )
    try:
        register(demo.base, server.url("/demo"))
        login = requests.post(
            f"{demo.base}/sso/login", headers={"X-SSO-Email": "ann@example.com"}, timeout=10
        )
        profile = login.json()["user"]["id"]
        changed = requests.put(
            f"{demo.base}/v2/profiles/{profile}",
            json={"lastName": "Lee"},
            headers=ADMIN,
            timeout=10,
        )
        assert changed.status_code == 200, changed.text
        wait_until(lambda: len(server.received) == 1)
        url = f"{demo.base}/metrics"
        wait_until(
            lambda: value(scrape(url), "kaizen_webhooks_deliveries", status="succeeded") == 1
        )
        latency = "kaizen_webhooks_delivery_latency_seconds_count"  # counted last
        wait_until(lambda: value(scrape(url), latency, topic=TOPIC) == 1)
        samples = scrape(url)
        # The demo shows the attempt's line, as an operator's logs would.
        line = r"Webhook attempt 1 of delivery \S+ \(registration \S+, topic profile_updated\)"
        demo.wait_for_output(line + r": success, status 200, \d+ ms; delivered\n")
    finally:
        demo.stop()
    assert value(samples, "kaizen_webhooks_deliveries_enqueued_total", topic=TOPIC) == 1
    assert attempts(samples, "success") == 1
    assert value(samples, "kaizen_webhooks_enqueue_seconds_count", topic=TOPIC) == 1
    assert value(samples, "kaizen_webhooks_registrations", state="active") == 1
    assert value(samples, "kaizen_webhooks_deliveries", status="pending") == 0
    assert value(samples, "kaizen_webhooks_database_up") == 1
    assert value(samples, "kaizen_webhooks_attempts_in_flight") == 0


def test_the_demo_and_its_default_install_work_without_prometheus_client(
    tmp_path: Path,
) -> None:
    script = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from example_app import create_app\n"
        f"app = create_app(instance_path={str(tmp_path)!r})\n"
        "answer = app.test_client().get('/metrics')\n"
        "print(answer.status_code, answer.get_data(as_text=True).strip())\n"
        "topics = app.test_client().get('/v2/webhooks/topics', "
        "headers={'Authorization': 'Bearer admin-token'})\n"
        "print(topics.status_code)\n"
    )
    lines = run_python(script).splitlines()
    assert lines[-2] == (
        "501 GET /metrics needs prometheus-client: pip install 'flask-kaizen-webhooks[metrics]'"
    )
    assert lines[-1] == "200"


@pytest.mark.parametrize("multiprocess", [True, False], ids=["multiprocess", "per-process"])
def test_web_and_worker_processes_on_postgres_report_the_deliveries(
    tmp_path: Path, postgres_url: str, receiver: Any, multiprocess: bool
) -> None:
    empty(postgres_url)
    hang = threading.Event()

    def respond(request: Any, _count: int) -> Reply:
        if request.path == "/hang":
            return Reply(wait=hang)
        return Reply(status=500 if request.path == "/fail" else 200)

    server = receiver(respond)
    shared = tmp_path / "prometheus"
    shared.mkdir()
    extra = {"PROMETHEUS_MULTIPROC_DIR": str(shared)} if multiprocess else {}
    # The web side takes a registration on 127.0.0.2; the workers' guard, allowing 127.0.0.1
    # only (tests.worker_host), refuses it when they send.
    site_config = {
        "KAIZEN_WEBHOOKS_EXECUTOR": "none",
        "KAIZEN_WEBHOOKS_ALLOWED_NETWORKS": ["127.0.0.0/8"],
    }
    site_env = host_environment(
        KWT_DATABASE_URI=postgres_url, KWT_CONFIG=json.dumps(site_config), **extra
    )
    site = HostProcess(
        gunicorn_command(), site_env, listening=r"Listening at: http://127\.0\.0\.1:(\d+)"
    )
    workers: list[HostProcess] = []
    try:
        worker_config = {
            "SECRET_KEY": "restart-host-secret-key",
            "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [],  # one attempt each: the counts are exact
            "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 1.0,  # for the answers, on a busy machine
        }
        worker_env = host_environment(
            KWT_DATABASE_URI=postgres_url, KWT_CONFIG=json.dumps(worker_config), **extra
        )
        command = [python(), "-m", "flask", "--app", "tests.worker_host:create_app", "webhooks"]
        command += ["worker", "--metrics-port", "0"]
        for _ in range(2):
            workers.append(
                HostProcess(
                    command, worker_env, listening=r"Metrics at http://127\.0\.0\.1:(\d+)/metrics"
                )
            )
        for path in ("/ok", "/fail", "/hang"):
            register(site.base, server.url(path))
        register(site.base, "http://127.0.0.2:9/refused")
        for _ in range(2):
            fired = requests.post(f"{site.base}/fire", params={"n": EVENTS // 2}, timeout=60)
            assert fired.json() == {"fired": EVENTS // 2}
        scrapes = [f"{worker.base}/metrics" for worker in workers]

        def done() -> bool:
            samples = scrape(scrapes[0])
            return (
                value(samples, "kaizen_webhooks_deliveries", status="succeeded") == EVENTS
                and value(samples, "kaizen_webhooks_deliveries", status="failed") == 3 * EVENTS
            )

        wait_until(done, timeout=60)

        # An attempt is counted just after its record is written: wait for the last ones.
        def counted() -> bool:
            now = [scrape(url) for url in scrapes]
            each = 2 if multiprocess else 1  # in multiprocess mode, each scrape shows them all

            def total(name: str) -> float:
                return sum(value(samples, name, topic=TOPIC) for samples in now)

            return (
                sum(attempts(samples, outcome) for samples in now for outcome in OUTCOMES)
                == 4 * EVENTS * each
                and total("kaizen_webhooks_attempt_duration_seconds_count") == 4 * EVENTS * each
                and total("kaizen_webhooks_delivery_latency_seconds_count") == EVENTS * each
            )

        wait_until(counted)
        by_worker = [scrape(url) for url in scrapes]
        site_scrape = scrape(f"{site.base}/metrics")
    finally:
        hang.set()
        for process in [*workers, site]:
            process.stop()
        forget_the_hosts_tables(postgres_url)
    for samples in [*by_worker, site_scrape]:  # the database's gauges: the same everywhere
        assert value(samples, "kaizen_webhooks_deliveries", status="succeeded") == EVENTS
        assert value(samples, "kaizen_webhooks_deliveries", status="failed") == 3 * EVENTS
        assert value(samples, "kaizen_webhooks_deliveries", status="pending") == 0
        assert value(samples, "kaizen_webhooks_registrations", state="active") == 4
        assert value(samples, "kaizen_webhooks_oldest_due_seconds") == 0
        assert value(samples, "kaizen_webhooks_database_up") == 1
        failing = [
            count
            for (name, _labels), count in samples.items()
            if name == "kaizen_webhooks_registration_consecutive_failures"
        ]
        assert sorted(failing) == [EVENTS, EVENTS, EVENTS]
    if multiprocess:  # every process's counts, whichever process is scraped
        for samples in [*by_worker, site_scrape]:
            for outcome in OUTCOMES:
                assert attempts(samples, outcome) == EVENTS, outcome
            enqueued = value(samples, "kaizen_webhooks_deliveries_enqueued_total", topic=TOPIC)
            assert enqueued == 4 * EVENTS
            latency = "kaizen_webhooks_delivery_latency_seconds_count"
            assert value(samples, latency, topic=TOPIC) == EVENTS  # the successes
            duration = "kaizen_webhooks_attempt_duration_seconds_count"
            assert value(samples, duration, topic=TOPIC) == 4 * EVENTS
            assert value(samples, "kaizen_webhooks_enqueue_seconds_count", topic=TOPIC) == EVENTS
            assert value(samples, "kaizen_webhooks_attempts_in_flight") == 0
    else:  # each worker its own: together, every attempt once
        for outcome in OUTCOMES:
            assert sum(attempts(samples, outcome) for samples in by_worker) == EVENTS, outcome
        for samples in by_worker:  # the workers store nothing
            assert value(samples, "kaizen_webhooks_deliveries_enqueued_total", topic=TOPIC) == 0


def shared_scrape(directory: Path) -> Samples:
    """What a scrape in multiprocess mode shows: every process's files in ``directory``."""
    from prometheus_client import CollectorRegistry, generate_latest

    from flask_kaizen_webhooks.web.metrics import ProcessFiles

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessFiles(str(directory)))
    return parse(generate_latest(registry).decode())


def test_an_operators_disable_outlives_its_command_in_the_multiprocess_directory(
    make_host: Any, tmp_path: Path
) -> None:
    """``flask webhooks disable`` counts in its own short-lived process: sharing the web and
    worker processes' directory, its count reaches their scrapes."""
    host = make_host("sqlite", KAIZEN_WEBHOOKS_EXECUTOR="none", **DELIVERY_CONFIG)
    registration = conftest_register(host, "http://127.0.0.1:9/hook")["id"]
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = host_environment(
        KWT_DATABASE_URI=host.app.config["KAIZEN_WEBHOOKS_DATABASE_URI"],
        PROMETHEUS_MULTIPROC_DIR=str(shared),
    )
    command = [python(), "-m", "flask", "--app", "tests.worker_host:create_app", "webhooks"]
    disabled = subprocess.run(
        [*command, "disable", registration],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert disabled.returncode == 0, disabled.stderr
    samples = shared_scrape(shared)
    disables = "kaizen_webhooks_registrations_disabled_total"
    assert value(samples, disables, reason="operator") == 1
    assert value(samples, disables, reason="owner") == 0


def test_celery_prefork_children_count_into_the_multiprocess_directory(
    web: Host, receiver: Any, celery_env: dict[str, str], tmp_path: Path
) -> None:
    server = receiver(lambda request, n: Reply(status=500 if request.path == "/fail" else 200))
    conftest_register(web, server.url("/ok"))
    conftest_register(web, server.url("/fail"))
    shared = tmp_path / "prometheus"
    shared.mkdir()
    command = celery_worker_command("prefork", pool="prefork")
    env = {
        **os.environ,
        **celery_env,
        "KWT_CONFIG": json.dumps({"KAIZEN_WEBHOOKS_RETRY_SCHEDULE": []}),
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
    }
    worker = subprocess.Popen(command, cwd=test_celery.ROOT, env=env)
    try:
        with web.app.app_context():
            for n in range(EVENTS // 2):
                web.webhooks.trigger(TOPIC, {"n": n})

        def done() -> bool:  # each attempt's latency is counted after its outcome
            samples = shared_scrape(shared)
            latency = "kaizen_webhooks_delivery_latency_seconds_count"
            return (
                attempts(samples, "success") + attempts(samples, "5xx") == EVENTS
                and value(samples, latency, topic=TOPIC) == EVENTS // 2
            )

        wait_until(done, timeout=60)
        samples = shared_scrape(shared)
    finally:
        worker.terminate()
        worker.wait(30)
    assert attempts(samples, "success") == EVENTS // 2
    assert attempts(samples, "5xx") == EVENTS // 2
    assert value(samples, "kaizen_webhooks_delivery_latency_seconds_count", topic=TOPIC) == (
        EVENTS // 2
    )
    assert value(samples, "kaizen_webhooks_attempts_in_flight") == 0
