"""``GET <prefix>/health``: 200 with the oldest due work's wait and the engine's state while
delivery keeps up; 503 when this process's engine is stopped with work due, when it died, or
when due work waited past ``KAIZEN_WEBHOOKS_HEALTH_MAX_DELAY``; answered without credentials and
telling nothing of owners, registrations or secrets."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import DELIVERY_CONFIG
from tests.receivers import Reply, wait_until
from tests.test_ordering import register

HEALTH = "/v2/webhooks/health"
SECRET = "signature_secret_0123"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_health_follows_the_engine_and_the_oldest_due_work(
    make_host: Any, backend: str, receiver: Any
) -> None:
    config = {**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_HEALTH_MAX_DELAY": 1.0}
    host = make_host(backend, **config)
    server = receiver(lambda request, n: Reply())
    rid = register(host, server.url("/h"))
    client = host.app.test_client()
    host.webhooks.start(host.app)
    answer = client.get(HEALTH)  # no credentials
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {
        "status": "ok",
        "problems": [],
        "oldest_due_seconds": 0.0,
        "max_delay_seconds": 1.0,
        "engine": "running",
    }
    host.webhooks.shutdown(host.app)
    fired = time.monotonic()
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
    stopped = client.get(HEALTH)
    assert stopped.status_code == 503
    if time.monotonic() - fired < 1.0:  # not yet behind, unless this machine is slow
        assert stopped.get_json()["problems"] == ["engine_stopped"]
    assert "engine_stopped" in stopped.get_json()["problems"]
    assert stopped.get_json()["engine"] == "stopped"
    time.sleep(1.2)
    behind = client.get(HEALTH).get_json()
    assert behind["problems"] == ["behind", "engine_stopped"]
    assert behind["oldest_due_seconds"] > 1.0
    host.webhooks.start(host.app)
    wait_until(lambda: len(server.received) == 1)
    wait_until(lambda: client.get(HEALTH).status_code == 200)
    text = client.get(HEALTH).get_data(as_text=True)
    assert rid not in text and "org-1" not in text and SECRET not in text


def test_an_engine_whose_thread_died_is_unhealthy(make_host: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    host.webhooks.start(host.app)
    executor = host.app.extensions["kaizen_webhooks"].executor
    poller = executor._poller
    executor._stopping.set()  # the poller thread ends, as if it died...
    poller.join(5)
    executor._stopping.clear()  # ...while the engine was never stopped
    answer = host.app.test_client().get(HEALTH)
    assert answer.status_code == 503
    assert answer.get_json()["problems"] == ["engine_died"]
    executor._stopping.set()


def test_without_an_engine_here_only_the_delay_counts(make_host: Any) -> None:
    host = make_host("sqlite", **{**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_EXECUTOR": "none"})
    register(host, "http://127.0.0.1:9/h")
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
    answer = host.app.test_client().get(HEALTH)
    assert answer.status_code == 200
    assert answer.get_json()["engine"] == "elsewhere"


def test_deliveries_waiting_for_a_rate_limit_are_not_behind(make_host: Any, receiver: Any) -> None:
    config = {**DELIVERY_CONFIG, "KAIZEN_WEBHOOKS_HEALTH_MAX_DELAY": 1.0}
    host = make_host("sqlite", **config)
    server = receiver(lambda request, n: Reply())
    register(host, server.url("/paced"), max_per_second=1)
    host.webhooks.start(host.app)
    with host.app.app_context():
        for n in range(20):
            host.webhooks.trigger("profile_updated", {"n": n})
    client = host.app.test_client()
    answers = []
    for _ in range(4):
        time.sleep(0.8)
        answers.append(client.get(HEALTH).status_code)
    assert len(server.received) < 20  # still paced
    assert answers == [200, 200, 200, 200]
