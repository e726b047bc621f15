"""Setting the extension up: configuration, several apps, the host's own topics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_kaizen_webhooks import ConfigurationError, KaizenWebhooks, WebhooksError, get_state
from tests.conftest import ADMIN, install_demo_auth

BODY = {"topic": "profile_updated", "url": "https://h.example.com/", "secret": "s" * 20}


def bare_app(tmp_path: Path, **config: Any) -> Flask:
    app = Flask("bare", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="k", **config)
    return app


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KAIZEN_WEBHOOKS_URL_PREFIX", "no-slash"),
        ("KAIZEN_WEBHOOKS_URL_PREFIX", 5),
        ("KAIZEN_WEBHOOKS_ALLOW_HTTP", "yes"),
        ("KAIZEN_WEBHOOKS_MAX_BODY_BYTES", 0),
        ("KAIZEN_WEBHOOKS_MAX_BODY_BYTES", "1000"),
        ("KAIZEN_WEBHOOKS_PAGE_SIZE", True),
        ("KAIZEN_WEBHOOKS_PAGE_SIZE", 500),
        ("KAIZEN_WEBHOOKS_DATABASE_URI", "not a url"),
        ("KAIZEN_WEBHOOKS_SQLITE_BUSY_TIMEOUT", -1),
        ("KAIZEN_WEBHOOKS_PROXY", "smokescreen:4750"),
        ("KAIZEN_WEBHOOKS_PROXY", "socks5://127.0.0.1:1080"),
        ("KAIZEN_WEBHOOKS_PROXY", "http://proxy.internal"),  # no port
        ("KAIZEN_WEBHOOKS_PROXY", "http://proxy.internal:99999"),
        ("KAIZEN_WEBHOOKS_PROXY", 4750),
    ],
)
def test_bad_config_fails_at_init_app_naming_the_key(tmp_path: Path, key: str, value: Any) -> None:
    app = bare_app(tmp_path, **{key: value})
    with pytest.raises(ConfigurationError) as raised:
        KaizenWebhooks(app)
    assert raised.value.key == key
    assert key in str(raised.value)
    assert "kaizen_webhooks" not in app.extensions


@pytest.mark.parametrize(
    ("config", "executor"),
    [
        ({}, "thread"),
        ({"KAIZEN_WEBHOOKS_EXECUTOR": "none"}, "none"),
        ({"KAIZEN_WEBHOOKS_DISPATCHER": "none"}, "none"),  # the former name
        ({"KAIZEN_WEBHOOKS_EXECUTOR": "none", "KAIZEN_WEBHOOKS_DISPATCHER": "none"}, "none"),
    ],
)
def test_the_executor_may_be_set_by_its_former_name(
    tmp_path: Path, config: dict[str, str], executor: str
) -> None:
    app = bare_app(tmp_path, **config)
    KaizenWebhooks(app)
    assert get_state(app).settings.executor == executor


def test_a_proxy_url_reaches_every_client(tmp_path: Path) -> None:
    app = bare_app(tmp_path, KAIZEN_WEBHOOKS_PROXY="http://smokescreen.internal:4750")
    KaizenWebhooks(app)
    state = get_state(app)
    assert {client.proxy for client in state.clients} == {"http://smokescreen.internal:4750"}


def test_a_celery_workers_engine_makes_as_many_attempts_at_once_as_the_thread_engine(
    tmp_path: Path,
) -> None:
    from celery import Celery

    app = bare_app(tmp_path, KAIZEN_WEBHOOKS_EXECUTOR="celery", KAIZEN_WEBHOOKS_WORKERS=2)
    app.extensions["celery"] = Celery("t", broker="memory://")
    KaizenWebhooks(app)
    state = get_state(app)
    assert state.client.max_active == 2  # KAIZEN_WEBHOOKS_WORKERS, as for the thread engine
    assert state.sync_client.max_active == state.settings.sync_workers


def test_missing_secret_key_is_a_clear_error(tmp_path: Path) -> None:
    app = Flask("nokey", instance_path=str(tmp_path))
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        KaizenWebhooks(app)


def test_defaults_are_written_back_to_config(tmp_path: Path) -> None:
    app = bare_app(tmp_path)
    KaizenWebhooks(app)
    assert app.config["KAIZEN_WEBHOOKS_URL_PREFIX"] == "/v2/webhooks"
    assert app.config["KAIZEN_WEBHOOKS_ALLOW_HTTP"] is False
    settings = get_state(app).settings
    assert settings.max_body_bytes == 64 * 1024
    assert settings.page_size == 50


def test_second_init_app_is_a_runtime_error(tmp_path: Path) -> None:
    app = bare_app(tmp_path)
    webhooks = KaizenWebhooks(app)
    with pytest.raises(RuntimeError, match="already set up"):
        webhooks.init_app(app)
    with pytest.raises(RuntimeError, match="already set up"):
        KaizenWebhooks(app)


def test_state_of_an_app_without_the_extension_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="KaizenWebhooks"):
        get_state(bare_app(tmp_path))


def test_one_extension_serves_several_apps_with_their_own_settings(tmp_path: Path) -> None:
    webhooks = KaizenWebhooks()
    install_demo_auth(webhooks)
    first = Flask("first", instance_path=str(tmp_path / "first"))
    first.config.update(SECRET_KEY="a")
    second = Flask("second", instance_path=str(tmp_path / "second"))
    second.config.update(SECRET_KEY="b", KAIZEN_WEBHOOKS_URL_PREFIX="/hooks/")
    webhooks.init_app(first)
    webhooks.init_app(second)
    one, two = first.test_client(), second.test_client()
    assert one.post("/v2/webhooks/registrations", json=BODY, headers=ADMIN).status_code == 201
    assert two.get("/v2/webhooks/registrations", headers=ADMIN).status_code == 404
    # Each app keeps its own embedded database.
    assert two.get("/hooks/registrations", headers=ADMIN).get_json()["items"] == []
    assert len(one.get("/v2/webhooks/registrations", headers=ADMIN).get_json()["items"]) == 1
    assert (tmp_path / "first" / "kaizen_webhooks.sqlite3").is_file()
    assert (tmp_path / "second" / "kaizen_webhooks.sqlite3").is_file()
    for app in (first, second):
        get_state(app).shutdown()
        get_state(app).database.dispose()


def test_host_adds_its_own_topic_with_one_call(make_host: Any) -> None:
    host = make_host("sqlite")
    topic = host.webhooks.add_topic(
        "course_completed", "async", "A learner completed a course.", {"courseId": "c1"}
    )
    assert topic.mode.value == "async"
    client = host.app.test_client()
    topics = client.get("/v2/webhooks/topics", headers=ADMIN).get_json()["topics"]
    assert topics[-1] == {
        "name": "course_completed",
        "mode": "async",
        "description": "A learner completed a course.",
        "sample_payload": {"courseId": "c1"},
    }
    body = {**BODY, "topic": "course_completed"}
    assert client.post("/v2/webhooks/registrations", json=body, headers=ADMIN).status_code == 201


@pytest.mark.parametrize(
    ("name", "mode"), [("Bad Name", "async"), ("profile_updated", "sync"), ("ok_name", "later")]
)
def test_bad_topics_are_refused(tmp_path: Path, name: str, mode: str) -> None:
    webhooks = KaizenWebhooks()
    with pytest.raises((WebhooksError, ValueError)):
        webhooks.add_topic(name, mode, "description")


def test_the_extensions_callbacks_are_readable_and_settable_by_their_former_names(
    host: Any,
) -> None:
    def loader() -> None:
        return None

    host.webhooks.user_loader(loader)
    assert host.webhooks.user_loader_callback is loader
    host.webhooks.permission_checker_callback = None
    response = host.app.test_client().get("/v2/webhooks/topics")
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "not_configured"
