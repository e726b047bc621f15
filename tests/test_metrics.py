"""Prometheus metrics, scraped as Prometheus would from the view a host mounts, after real
deliveries to receivers on 127.0.0.1: what each process counts (counted here as the change
between two scrapes, since the instruments are the process's) and what each scrape reads from
the database; neither a secret nor a payload in them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from flask_kaizen_webhooks import ConfigurationError, MetricsUnavailable, signals
from flask_kaizen_webhooks import metrics as metrics_module
from flask_kaizen_webhooks.state import get_state
from flask_kaizen_webhooks.storage import registrations
from tests.conftest import ADMIN, DELIVERY_CONFIG, Host
from tests.receivers import Received, Reply, wait_until
from tests.test_ordering import register

SECRET = "signature_secret_0123"
MARK = "payload-marker-5b1d"
TOPIC = "profile_updated"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by its name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def mount(host: Host) -> Callable[[], Samples]:
    """Mount the metrics at /metrics as the docs say; a function scraping them."""
    host.app.add_url_rule("/metrics", view_func=host.webhooks.metrics_view)
    client = host.app.test_client()

    def scrape() -> Samples:
        answer = client.get("/metrics")
        assert answer.status_code == 200
        assert answer.content_type.startswith("text/plain")
        text = answer.get_data(as_text=True)
        assert SECRET not in text and MARK not in text
        return parse(text)

    return scrape


def add_refused(host: Host) -> str:
    """A registration whose URL the address guard refuses (loopback, not an allowed network)."""
    with host.app.app_context():
        state = get_state()
        made = registrations.create_registration(
            state.database.session,
            owner="org-1",
            topic=TOPIC,
            url="http://127.0.0.2:9/refused",
            sealed_secret=state.secrets.seal(SECRET),
        ).id
        state.database.session.commit()
    return made


@pytest.mark.parametrize("backend", ["sqlite", "postgres-hostdb"])
def test_each_outcome_is_counted_and_the_database_gauges_tell_the_truth(
    make_host: Any, receiver: Any, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_kaizen_webhooks")
    hang = threading.Event()

    def respond(request: Received, _count: int) -> Reply:
        if request.path == "/hang":
            return Reply(wait=hang)
        return Reply(status={"/fail": 500, "/gone": 410}.get(request.path, 200))

    config = {
        **DELIVERY_CONFIG,
        # Long enough for every answer on a busy machine, and to scrape the hanging attempt.
        "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 3.0,
        "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [],  # one attempt each: the counts are exact
        "KAIZEN_WEBHOOKS_METRICS_PER_REGISTRATION": True,
    }
    host = make_host(backend, **config)
    scrape = mount(host)
    server = receiver(respond)
    ids = {path: register(host, server.url(path)) for path in ("/ok", "/fail", "/hang", "/gone")}
    ids["refused"] = add_refused(host)
    before = scrape()
    with host.app.app_context():
        if host.db is not None:  # in a transaction of the host's: written as one event row
            host.db.session.execute(text("SELECT 1"))
        host.webhooks.trigger(TOPIC, {"mark": MARK})
        if host.db is not None:
            assert value(scrape(), "kaizen_webhooks_deliveries_enqueued_total", topic=TOPIC) == (
                value(before, "kaizen_webhooks_deliveries_enqueued_total", topic=TOPIC)
            ), "counted before the host's transaction commits"
            host.db.session.commit()
    host.webhooks.start(host.app)
    wait_until(lambda: any(request.path == "/hang" for request in server.received))
    during = scrape()
    assert value(during, "kaizen_webhooks_attempts_in_flight") >= 1  # the hanging attempt
    assert value(during, "kaizen_webhooks_deliveries", status="pending") >= 1

    def grown(now: Samples, name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    def finished() -> bool:  # ended, and each attempt counted, which comes after its record
        now = scrape()
        by_registration = "kaizen_webhooks_registration_attempts_total"
        return (
            value(now, "kaizen_webhooks_deliveries", status="pending") == 0
            and all(
                grown(now, by_registration, registration=made, result="success")
                + grown(now, by_registration, registration=made, result="failure")
                >= 1
                for made in ids.values()
            )
            and grown(now, "kaizen_webhooks_delivery_latency_seconds_count", topic=TOPIC) >= 1
            and grown(now, "kaizen_webhooks_registrations_disabled_total", reason="gone") >= 1
        )

    wait_until(finished, timeout=30)
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        return grown(after, name, **labels)

    assert grew("kaizen_webhooks_deliveries_enqueued_total", topic=TOPIC) == 5
    for outcome in ("success", "5xx", "timeout", "refused", "4xx"):
        assert grew("kaizen_webhooks_attempts_total", topic=TOPIC, outcome=outcome) == 1, outcome
    assert grew("kaizen_webhooks_attempt_duration_seconds_count", topic=TOPIC) == 5
    # The hanging attempt's seconds on the wire are in the histogram's sum.
    assert grew("kaizen_webhooks_attempt_duration_seconds_sum", topic=TOPIC) >= 3.0
    assert grew("kaizen_webhooks_delivery_latency_seconds_count", topic=TOPIC) == 1  # successes
    assert 0 < grew("kaizen_webhooks_delivery_latency_seconds_sum", topic=TOPIC) < 10
    assert grew("kaizen_webhooks_enqueue_seconds_count", topic=TOPIC) == 1
    by_registration = "kaizen_webhooks_registration_attempts_total"
    assert grew(by_registration, registration=ids["/ok"], result="success") == 1
    for path in ("/fail", "/hang", "refused", "/gone"):
        assert grew(by_registration, registration=ids[path], result="failure") == 1, path
        assert grew(by_registration, registration=ids[path], result="success") == 0, path
    assert grew("kaizen_webhooks_registrations_disabled_total", reason="gone") == 1
    assert grew("kaizen_webhooks_registrations_disabled_total", reason="failing") == 0
    assert value(after, "kaizen_webhooks_attempts_in_flight") == value(
        before, "kaizen_webhooks_attempts_in_flight"
    )
    # Read from the database: this app's own truth, not a change.
    assert value(after, "kaizen_webhooks_deliveries", status="succeeded") == 1
    assert value(after, "kaizen_webhooks_deliveries", status="failed") == 4
    assert value(after, "kaizen_webhooks_registrations", state="active") == 4
    assert value(after, "kaizen_webhooks_registrations", state="disabled") == 1
    assert value(after, "kaizen_webhooks_oldest_due_seconds") == 0
    assert value(after, "kaizen_webhooks_database_up") == 1
    failing = {
        dict(labels)["registration"]: count
        for (name, labels), count in after.items()
        if name == "kaizen_webhooks_registration_consecutive_failures"
    }
    assert failing == {ids["/fail"]: 1, ids["/hang"]: 1, ids["refused"]: 1}
    # Neither the secret nor the payload in the metrics (checked at each scrape), in the
    # health check, or in anything logged, from the attempts' lines to the warnings.
    health = host.app.test_client().get("/v2/webhooks/health").get_data(as_text=True)
    assert SECRET not in health and MARK not in health
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Webhook attempt 1 of delivery" in logged
    assert SECRET not in logged and MARK not in logged
    hang.set()


def test_the_oldest_due_wait_grows_while_nothing_sends(make_host: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    scrape = mount(host)
    register(host, "http://127.0.0.1:9/never")
    with host.app.app_context():
        host.webhooks.trigger(TOPIC, {"n": 1})
    first = value(scrape(), "kaizen_webhooks_oldest_due_seconds")
    wait_until(lambda: value(scrape(), "kaizen_webhooks_oldest_due_seconds") > first + 0.2)
    assert value(scrape(), "kaizen_webhooks_deliveries", status="pending") == 1


def test_disabling_is_counted_by_who_did_it(make_host: Any, receiver: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    scrape = mount(host)
    by_owner = register(host, "http://127.0.0.1:9/a")
    by_operator = register(host, "http://127.0.0.1:9/b")
    before = scrape()
    client = host.app.test_client()
    path = f"/v2/webhooks/registrations/{by_owner}"
    current = client.get(path, headers=ADMIN)
    body = {"topic": TOPIC, "url": "http://127.0.0.1:9/a", "state": "disabled"}
    headers = {**ADMIN, "If-Match": current.headers["ETag"]}
    changed = client.put(path, json=body, headers=headers)
    assert changed.status_code == 200, changed.get_json()
    # Disabled again: no change, nothing counted.
    again = client.put(path, json=body, headers={**ADMIN, "If-Match": changed.headers["ETag"]})
    assert again.status_code == 200, again.get_json()
    runner = host.app.test_cli_runner()
    assert runner.invoke(args=["webhooks", "disable", by_operator]).exit_code == 0
    assert runner.invoke(args=["webhooks", "disable", by_operator]).exit_code == 0
    after = scrape()
    for reason, count in {"owner": 1, "operator": 1, "gone": 0, "failing": 0}.items():
        name = "kaizen_webhooks_registrations_disabled_total"
        assert value(after, name, reason=reason) - value(before, name, reason=reason) == count
    assert value(after, "kaizen_webhooks_registrations", state="disabled") == 2


def test_synchronous_attempts_are_counted_and_tests_are_not(make_host: Any, receiver: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    scrape = mount(host)
    server = receiver(lambda request, n: Reply())
    register_sync = host.app.test_client().post(
        "/v2/webhooks/registrations",
        json={"topic": "user_logged_in", "url": server.url("/login"), "secret": SECRET},
        headers=ADMIN,
    )
    assert register_sync.status_code == 201
    before = scrape()
    with host.app.app_context():
        [result] = host.webhooks.trigger("user_logged_in", {"user": {"id": "u1"}})
    assert result.ok
    tested = host.app.test_client().post(
        "/v2/webhooks/test", json={"topic": "user_logged_in"}, headers=ADMIN
    )
    assert tested.status_code == 200, tested.get_json()
    assert len(server.received) == 2
    after = scrape()
    name = "kaizen_webhooks_attempts_total"
    labels = {"topic": "user_logged_in", "outcome": "success"}
    assert value(after, name, **labels) - value(before, name, **labels) == 1
    enqueued = "kaizen_webhooks_deliveries_enqueued_total"
    assert value(after, enqueued, topic="user_logged_in") == 0  # synchronous: not enqueued


def test_metrics_off_count_nothing(make_host: Any, receiver: Any) -> None:
    counting = make_host("sqlite", **DELIVERY_CONFIG)
    scrape = mount(counting)
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_METRICS=False)
    server = receiver(lambda request, n: Reply())
    register(host, server.url("/off"))
    before = scrape()
    with host.app.app_context():
        host.webhooks.trigger(TOPIC, {"n": 1})
    host.webhooks.start(host.app)
    wait_until(lambda: len(server.received) == 1)
    host.webhooks.shutdown(host.app)
    after = scrape()
    counted = {
        key: count
        for key, count in after.items()
        if key[0].startswith("kaizen_webhooks_")
        and key[0].endswith(("_total", "_count"))
        and count != before.get(key, 0.0)
    }
    assert counted == {}


def test_asking_for_metrics_without_prometheus_client_is_a_clear_error(
    make_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flask_kaizen_webhooks.metrics.prometheus_available", lambda: False)
    monkeypatch.setattr("flask_kaizen_webhooks.web.metrics.prometheus_available", lambda: False)
    with pytest.raises(ConfigurationError, match=r"\[metrics\]"):
        make_host("sqlite", KAIZEN_WEBHOOKS_METRICS=True)
    host = make_host("sqlite")  # the default: on only when it is installed
    assert get_state(host.app).context.metrics.__class__.__name__ == "NoMetrics"
    host.app.add_url_rule("/metrics", view_func=host.webhooks.metrics_view)
    answer = host.app.test_client().get("/metrics")
    assert answer.status_code == 501
    assert "pip install 'flask-kaizen-webhooks[metrics]'" in answer.get_data(as_text=True)
    ended = host.app.test_cli_runner().invoke(args=["webhooks", "worker", "--metrics-port", "0"])
    assert ended.exit_code == 1
    assert "flask-kaizen-webhooks[metrics]" in ended.output
    with pytest.raises(MetricsUnavailable, match=r"^A metrics server needs prometheus-client"):
        host.webhooks.serve_metrics(0, app=host.app)


def exported_names(host: Host) -> set[str]:
    """Every series name the metrics can show: the instruments' and the database's."""
    from flask_kaizen_webhooks.metrics import PrometheusMetrics
    from flask_kaizen_webhooks.web.metrics import DatabaseGauges

    families = [
        family
        for instrument in PrometheusMetrics.instruments().values()
        for family in instrument.describe()
    ]
    families += list(DatabaseGauges(host.app).collect())
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def test_the_dashboard_and_the_alert_rules_use_only_metrics_that_exist(make_host: Any) -> None:
    import json
    import re
    from pathlib import Path

    import yaml

    docs = Path(__file__).resolve().parent.parent / "docs"
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((docs / "alert-rules.yml").read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    alerts = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert queries and alerts
    names = exported_names(make_host("sqlite"))
    used = {name for expr in queries + alerts for name in re.findall(r"kaizen_webhooks_\w+", expr)}
    assert used - names == set()
    # Every metric is on the dashboard.
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in names} <= shown


def test_a_process_that_serves_no_requests_serves_its_metrics_over_http(make_host: Any) -> None:
    import requests

    host = make_host("sqlite", **DELIVERY_CONFIG)
    register(host, "http://127.0.0.1:9/never")
    server = host.webhooks.serve_metrics(0, app=host.app)
    try:
        answer = requests.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
    finally:
        server.shutdown()
    assert answer.status_code == 200
    samples = parse(answer.text)
    assert value(samples, "kaizen_webhooks_database_up") == 1
    assert value(samples, "kaizen_webhooks_registrations", state="active") == 1


def latency(app: Any) -> tuple[float, float]:
    """The count and sum of the delivery latency histogram, read without a request (which
    would start the engine)."""
    from flask_kaizen_webhooks.web.metrics import exposition

    samples = parse(exposition(app)[0].decode())
    name = "kaizen_webhooks_delivery_latency_seconds"
    return value(samples, f"{name}_count", topic=TOPIC), value(samples, f"{name}_sum", topic=TOPIC)


@pytest.mark.parametrize("backend", ["sqlite", "postgres-hostdb"])
def test_latency_runs_from_the_commit_of_the_event_not_from_its_fan_out(
    make_host: Any, receiver: Any, backend: str
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG)
    server = receiver(lambda request, n: Reply())
    register(host, server.url("/late"))
    before = latency(host.app)
    host.webhooks.shutdown(host.app)  # stopped on purpose: nothing sends until started
    with host.app.app_context():
        if host.db is not None:  # one event row, fanned out once the engine runs
            host.db.session.execute(text("SELECT 1"))
        host.webhooks.trigger(TOPIC, {"n": 1})
        if host.db is not None:
            host.db.session.commit()
    time.sleep(1.0)  # nothing sends meanwhile
    host.webhooks.start(host.app)
    wait_until(lambda: latency(host.app)[0] == before[0] + 1)
    assert latency(host.app)[1] - before[1] >= 1.0


@pytest.mark.parametrize("backend", ["sqlite-hostdb", "postgres-hostdb"])
def test_latency_does_not_count_the_host_s_transaction_after_the_event_was_fired(
    make_host: Any, receiver: Any, backend: str
) -> None:
    host = make_host(backend, **DELIVERY_CONFIG)
    server = receiver(lambda request, n: Reply())
    register(host, server.url("/held"))
    before = latency(host.app)
    with host.app.app_context():
        host.db.session.execute(text("SELECT 1"))
        host.webhooks.trigger(TOPIC, {"n": 1})
        time.sleep(1.0)  # the host's request goes on with its transaction open
        committed = time.monotonic()
        host.db.session.commit()
    wait_until(lambda: latency(host.app)[0] == before[0] + 1)
    assert latency(host.app)[1] - before[1] <= time.monotonic() - committed + 0.05


def test_a_redelivery_s_latency_runs_from_the_redelivery(make_host: Any, receiver: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver(lambda request, n: Reply())
    register(host, server.url("/again"))
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger(TOPIC, {"n": 1})
    host.webhooks.start(host.app)
    wait_until(lambda: len(server.received) == 1)
    wait_until(lambda: latency(host.app)[0] >= 1)
    time.sleep(1.0)  # the delivery is a second old when it is sent again
    before = latency(host.app)
    asked = time.monotonic()
    again = host.app.test_client().post(
        f"/v2/webhooks/deliveries/{delivery_id}/redeliver", headers=ADMIN
    )
    assert again.status_code == 202, again.get_json()
    wait_until(lambda: latency(host.app)[0] == before[0] + 1)
    assert latency(host.app)[1] - before[1] <= time.monotonic() - asked + 0.05


def test_attempts_waiting_for_a_free_slot_are_not_in_flight(make_host: Any, receiver: Any) -> None:
    hang = threading.Event()
    config = {**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_WORKERS": 2, "KAIZEN_WEBHOOKS_ASYNC_TIMEOUT": 5}
    host = make_host("sqlite", **config)
    scrape = mount(host)
    server = receiver(lambda request, n: Reply(wait=hang))
    for n in range(4):  # four registrations' attempts handed to a client that makes two at once
        register(host, server.url(f"/hang{n}"))
    before = value(scrape(), "kaizen_webhooks_attempts_in_flight")
    with host.app.app_context():
        host.webhooks.trigger(TOPIC, {"n": 1})
    host.webhooks.start(host.app)
    wait_until(lambda: len(server.received) == 2)
    time.sleep(0.3)  # the other two stay waiting for a slot
    assert len(server.received) == 2
    assert value(scrape(), "kaizen_webhooks_attempts_in_flight") - before == 2
    hang.set()


def test_a_killed_process_s_attempts_in_flight_are_forgotten(tmp_path: Path) -> None:
    """In multiprocess mode a process killed mid-attempt leaves its count behind; the next
    scrape drops it."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from flask_kaizen_webhooks.web.metrics import forget_ended_processes

    script = (
        "import sys, time\n"
        "from flask_kaizen_webhooks.metrics import PrometheusMetrics\n"
        "PrometheusMetrics().in_flight(1)\n"
        "print('counted', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "counted"
    process.kill()
    process.wait(10)

    def in_flight() -> float:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
        return value(
            parse(generate_latest(registry).decode()), "kaizen_webhooks_attempts_in_flight"
        )

    assert in_flight() == 1  # what prometheus-client alone would keep showing
    forget_ended_processes(str(tmp_path))
    assert in_flight() == 0


def test_a_metric_that_fails_never_stops_a_webhook(
    make_host: Any, receiver: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver(lambda request, n: Reply())
    register(host, server.url("/full-disk"))
    metrics = get_state(host.app).context.metrics
    monkeypatch.setattr(metrics_module, "_FAILED", set())  # told once per process: told here

    class Full:
        def labels(self, *_labels: str) -> Any:
            raise OSError("No space left on device")

        def inc(self, *_change: int) -> None:
            raise OSError("No space left on device")

    monkeypatch.setattr(metrics, "_children", {})
    monkeypatch.setattr(metrics, "_made", dict.fromkeys(metrics._made, Full()))
    ended: list[dict[str, Any]] = []

    def succeeded(app: Any, **fields: Any) -> None:
        ended.append(fields)

    signals.delivery_succeeded.connect(succeeded, host.app)
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger(TOPIC, {"n": 1})
    host.webhooks.start(host.app)
    wait_until(lambda: [fields["delivery_id"] for fields in ended] == [delivery_id])
    assert len(server.received) == 1
    assert "Metrics: counting" in caplog.text


def test_the_enqueue_time_covers_the_whole_call(
    make_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_kaizen_webhooks import extension

    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(host, "http://127.0.0.1:9/never")
    checked = extension.checked_payload

    def slow_check(*args: Any) -> Any:  # the payload's check, encoding a large document
        time.sleep(0.2)
        return checked(*args)

    monkeypatch.setattr(extension, "checked_payload", slow_check)
    before = parse(exposition_text(host))
    with host.app.app_context():
        host.webhooks.trigger(TOPIC, {"n": 1})
    after = parse(exposition_text(host))
    name = "kaizen_webhooks_enqueue_seconds_sum"
    assert value(after, name, topic=TOPIC) - value(before, name, topic=TOPIC) >= 0.2


def exposition_text(host: Host) -> str:
    from flask_kaizen_webhooks.web.metrics import exposition

    return exposition(host.app)[0].decode()


def test_scrapes_at_once_share_one_read_of_the_database(
    make_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_kaizen_webhooks.storage import admin
    from flask_kaizen_webhooks.web import metrics as web_metrics

    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(host, "http://127.0.0.1:9/never")
    reads = []
    waiting = []
    gauges = admin.gauges

    class Watched(web_metrics.Read):
        """A read whose end the other scrapes are seen waiting for."""

        def __init__(self) -> None:
            super().__init__()
            done = self.done
            wait = done.wait

            def counted_wait(timeout: float | None = None) -> bool:
                waiting.append(1)
                return wait(timeout)

            done.wait = counted_wait  # type: ignore[method-assign]

    def slow_read(*args: Any, **kwargs: Any) -> Any:  # a large log on a busy database
        reads.append(1)
        wait_until(lambda: len(waiting) == 3, timeout=10)  # the other scrapes wait for it
        return gauges(*args, **kwargs)

    monkeypatch.setattr(web_metrics, "Read", Watched)
    monkeypatch.setattr(admin, "gauges", slow_read)
    texts: list[str] = []
    scrapes = [
        threading.Thread(target=lambda: texts.append(exposition_text(host))) for _ in range(4)
    ]
    for scrape in scrapes:
        scrape.start()
    for scrape in scrapes:
        scrape.join(20)
    assert len(texts) == 4 and len(reads) == 1
    assert all(
        value(parse(text), "kaizen_webhooks_registrations", state="active") == 1 for text in texts
    )
    exposition_text(host)  # the next scrape reads afresh
    assert len(reads) == 2


def test_attempts_are_not_counted_by_registration_unless_asked(
    make_host: Any, receiver: Any
) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    scrape = mount(host)
    server = receiver(lambda request, n: Reply())
    registration = register(host, server.url("/quiet"))
    with host.app.app_context():
        host.webhooks.trigger(TOPIC, {"n": 1})
    host.webhooks.start(host.app)
    name = "kaizen_webhooks_attempts_total"
    wait_until(lambda: value(scrape(), name, topic=TOPIC, outcome="success") >= 1)
    assert not [
        labels
        for (sample, labels) in scrape()
        if sample == "kaizen_webhooks_registration_attempts_total"
        and ("registration", registration) in labels
    ]


def test_a_name_that_does_not_resolve_is_a_connection_error(make_host: Any) -> None:
    host = make_host("sqlite", **{**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_RETRY_SCHEDULE": []})
    with host.app.app_context():
        state = get_state()
        registrations.create_registration(
            state.database.session,
            owner="org-1",
            topic=TOPIC,
            url="http://hooks.invalid/x",  # ".invalid" never resolves (RFC 2606)
            sealed_secret=state.secrets.seal(SECRET),
        )
        state.database.session.commit()
    before = parse(exposition_text(host))
    with host.app.app_context():
        host.webhooks.trigger(TOPIC, {"n": 1})
    host.webhooks.start(host.app)

    def attempts(outcome: str, samples: Samples) -> float:
        name = "kaizen_webhooks_attempts_total"
        return value(samples, name, topic=TOPIC, outcome=outcome)

    wait_until(
        lambda: (
            attempts("connection_error", parse(exposition_text(host)))
            == (attempts("connection_error", before) + 1)
        )
    )
    assert attempts("refused", parse(exposition_text(host))) == attempts("refused", before)


def test_scrapes_at_once_drop_a_killed_process_s_gauge_without_failing(tmp_path: Path) -> None:
    from flask_kaizen_webhooks.web.metrics import forget_ended_processes

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = tmp_path / f"gauge_livesum_{ended.stdout.strip()}.db"
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            forget_ended_processes(str(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    for _ in range(50):
        path.write_bytes(b"")
        scrapes = [threading.Thread(target=scrape) for _ in range(4)]
        for thread in scrapes:
            thread.start()
        for thread in scrapes:
            thread.join(5)
        assert errors == [] and not path.exists()


def test_a_scrape_passes_over_the_file_a_starting_process_has_not_set_up(
    make_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process starting to count creates its file, then sizes it: a scrape in between
    shows what the other processes counted, and fails on nothing."""
    script = (
        "from flask_kaizen_webhooks.metrics import PrometheusMetrics\n"
        f"PrometheusMetrics().attempted({TOPIC!r}, 'success', 0.2, 'r-1')\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    (tmp_path / "histogram_424242.db").write_bytes(b"")  # created, not yet sized
    (tmp_path / "counter_424243.db").write_bytes(bytes(65536))  # sized, no header yet
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    samples = parse(exposition_text(host))
    name = "kaizen_webhooks_attempts_total"
    assert value(samples, name, topic=TOPIC, outcome="success") == 1
    assert value(samples, "kaizen_webhooks_attempt_duration_seconds_count", topic=TOPIC) == 1


def test_a_scrape_reads_again_when_a_file_goes_after_it_was_listed(
    make_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory emptied at a deployment while a scrape reads it: the scrape reads
    what is there then."""
    from flask_kaizen_webhooks.web import metrics as web_metrics

    script = (
        "from flask_kaizen_webhooks.metrics import PrometheusMetrics\n"
        f"PrometheusMetrics().attempted({TOPIC!r}, '5xx', 0.2, 'r-1')\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    listed = web_metrics.written_files
    listings = []

    def stale(directory: str) -> list[str]:  # the first listing names a file gone since
        listings.append(1)
        gone = [os.path.join(directory, "counter_424244.db")] if len(listings) == 1 else []
        return listed(directory) + gone

    monkeypatch.setattr(web_metrics, "written_files", stale)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    samples = parse(exposition_text(host))
    assert len(listings) == 2
    assert value(samples, "kaizen_webhooks_attempts_total", topic=TOPIC, outcome="5xx") == 1


def test_a_multiprocess_directory_that_is_missing_is_a_clear_error(
    make_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_kaizen_webhooks.web.metrics import exposition

    missing = tmp_path / "prometheus"
    host = make_host("sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(missing))  # removed since the start
    with pytest.raises(NotADirectoryError, match=r"PROMETHEUS_MULTIPROC_DIR=.* is not a directory"):
        exposition(host.app)
    with pytest.raises(NotADirectoryError):
        host.webhooks.serve_metrics(0, app=host.app)
    ended = host.app.test_cli_runner().invoke(args=["webhooks", "worker", "--metrics-port", "0"])
    assert ended.exit_code == 1
    assert f"Cannot serve metrics: PROMETHEUS_MULTIPROC_DIR='{missing}' is not a directory" in (
        ended.output
    )


@pytest.mark.parametrize("name", ["missing", ""])
def test_an_app_whose_multiprocess_directory_is_missing_does_not_start(
    tmp_path: Path, name: str
) -> None:
    """prometheus-client would fail on a file of it, deep in init_app; the error says what
    to do instead, and metrics turned off start the app."""
    script = (
        "import sys\n"
        "from flask import Flask\n"
        "from flask_kaizen_webhooks import ConfigurationError, KaizenWebhooks\n"
        f"app = Flask('host', instance_path={str(tmp_path)!r})\n"
        "app.config.update(SECRET_KEY='s', KAIZEN_WEBHOOKS_EXECUTOR='none')\n"
        "app.config['KAIZEN_WEBHOOKS_METRICS'] = {'off': False, 'on': None}[sys.argv[1]]\n"
        "try:\n"
        "    KaizenWebhooks(app)\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('started')\n"
    )
    directory = str(tmp_path / name) if name else ""  # set and empty: the working directory's
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}

    def start(metrics: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", script, metrics],
            cwd=tmp_path,  # where an empty directory setting would write
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert start("on") == (
        "KAIZEN_WEBHOOKS_METRICS: metrics cannot be counted: "
        f"PROMETHEUS_MULTIPROC_DIR='{directory}' is not a directory: create it, "
        "writable by every process, before they start (or set KAIZEN_WEBHOOKS_METRICS = False)"
    )
    assert start("off") == "started"


def test_events_are_counted_when_the_host_s_transaction_commits_not_a_savepoint(
    make_host: Any,
) -> None:
    host = make_host("sqlite-hostdb", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")
    register(host, "http://127.0.0.1:9/never")
    name = "kaizen_webhooks_deliveries_enqueued_total"

    def enqueued() -> float:
        return value(parse(exposition_text(host)), name, topic=TOPIC)

    before = enqueued()
    db = host.db
    with host.app.app_context():
        db.session.execute(text("SELECT 1"))
        with db.session.begin_nested():  # released: the transaction goes on
            host.webhooks.trigger(TOPIC, {"n": 1})
        assert enqueued() == before
        db.session.rollback()  # and is undone
        session = db.session()
        session.execute(text("SELECT 1"))
        host.webhooks.trigger(TOPIC, {"n": 2})
        session.close()  # closed unfinished: undone too
        session.execute(text("SELECT 1"))
        session.commit()
        assert enqueued() == before
        db.session.execute(text("SELECT 1"))
        host.webhooks.trigger(TOPIC, {"n": 3})
        savepoint = db.session.begin_nested()
        savepoint.rollback()  # a savepoint undone: the transaction's event stays
        db.session.commit()
    assert enqueued() == before + 1
