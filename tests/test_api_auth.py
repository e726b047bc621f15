"""Identity and permission: the API refuses until the host says who the caller is."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import ADMIN, USER

PREFIX = "/v2/webhooks"
ENDPOINTS = [
    ("GET", "/registrations"),
    ("POST", "/registrations"),
    ("GET", "/registrations/abc"),
    ("PUT", "/registrations/abc"),
    ("DELETE", "/registrations/abc"),
    ("GET", "/topics"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_missing_identity_is_401(client: FlaskClient, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        response = client.open(PREFIX + path, method=method, headers=headers, json={})
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthenticated"
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_missing_permission_is_403(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(PREFIX + path, method=method, headers=USER, json={})
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert error["code"] == "forbidden"
    assert "Allow user to manage web hooks" in error["message"]


def test_without_callbacks_every_request_is_refused(make_host: Any) -> None:
    client = make_host("sqlite", auth=False).app.test_client()
    for method, path in ENDPOINTS:
        response = client.open(PREFIX + path, method=method, headers=ADMIN, json={})
        assert response.status_code == 403
        error = response.get_json()["error"]
        assert error["code"] == "not_configured"
        assert "@webhooks.user_loader" in error["message"]
        assert "@webhooks.permission_checker" in error["message"]


def test_owner_defaults_to_user_id_or_plain_value(make_host: Any) -> None:
    class User:
        def __init__(self, user_id: int) -> None:
            self.id = user_id

    host = make_host("sqlite", auth=False)
    webhooks = host.webhooks
    assert webhooks.owner_of(User(7)) == "7"
    assert webhooks.owner_of("org-9") == "org-9"
    assert webhooks.owner_of(42) == "42"
    with pytest.raises(Exception, match="owner_key"):
        webhooks.owner_of(object())

    current: dict[str, Any] = {"user": User(1)}
    webhooks.user_loader(lambda: current["user"])
    webhooks.permission_checker(lambda user: True)
    client = host.app.test_client()
    body = {"topic": "profile_updated", "url": "https://h.example.com/", "secret": "s" * 20}
    created = client.post(f"{PREFIX}/registrations", json=body).get_json()
    assert client.get(f"{PREFIX}/registrations/{created['id']}").status_code == 200
    current["user"] = User(2)
    assert client.get(f"{PREFIX}/registrations/{created['id']}").status_code == 404
    # A custom owner key (say, an organisation) shares registrations between users.
    webhooks.owner_key(lambda user: "organisation")
    created = client.post(f"{PREFIX}/registrations", json=body).get_json()
    current["user"] = User(3)
    assert client.get(f"{PREFIX}/registrations/{created['id']}").status_code == 200


def test_nothing_of_another_owner_ever_appears(make_host: Any, receiver: Any) -> None:
    from tests.conftest import DELIVERY_CONFIG, OTHER_ADMIN, register

    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver()
    theirs = register(host, server.url("/their-private-path"), headers=OTHER_ADMIN)
    with host.app.app_context():
        [their_delivery] = host.webhooks.trigger("profile_updated", {"secret_data": "theirs"})
    mine = register(host, server.url("/mine"))
    client = host.app.test_client()
    reg = f"{PREFIX}/registrations"
    answers = [
        client.get(reg, headers=ADMIN),
        client.get(f"{reg}?topic=profile_updated", headers=ADMIN),
        client.get(f"{reg}/{mine['id']}", headers=ADMIN),
        client.get(f"{reg}/{mine['id']}/deliveries", headers=ADMIN),
        client.get(f"{reg}/{theirs['id']}", headers=ADMIN),
        client.get(f"{reg}/{theirs['id']}/deliveries", headers=ADMIN),
        client.get(f"{PREFIX}/deliveries/{their_delivery}", headers=ADMIN),
        client.post(f"{PREFIX}/deliveries/{their_delivery}/redeliver", headers=ADMIN),
        client.post(
            f"{reg}/{theirs['id']}/rotate-secret", json={"rev": theirs["rev"]}, headers=ADMIN
        ),
        client.put(
            f"{reg}/{theirs['id']}",
            headers=ADMIN,
            json={"topic": "profile_updated", "url": server.url(), "rev": theirs["rev"]},
        ),
        client.delete(f"{reg}/{theirs['id']}?rev={theirs['rev']}", headers=ADMIN),
        client.post(
            f"{PREFIX}/test",
            json={"topic": "profile_updated", "registration_id": theirs["id"]},
            headers=ADMIN,
        ),
    ]
    for answer in answers:
        text = answer.get_data(as_text=True)
        for theirs_value in (
            theirs["id"],
            theirs["rev"],
            "their-private-path",
            their_delivery,
            "secret_data",
        ):
            assert theirs_value not in text, (answer.request.path, text)
    # Their registration is untouched.
    assert (
        client.get(f"{reg}/{theirs['id']}", headers=OTHER_ADMIN).get_json()["rev"] == theirs["rev"]
    )


def test_secrets_are_never_logged(
    make_host: Any, receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.conftest import DELIVERY_CONFIG, register
    from tests.receivers import Reply

    secret = "never_log_this_secret_42"
    caplog.set_level(logging.DEBUG)
    host = make_host("sqlite", **DELIVERY_CONFIG)
    server = receiver(lambda request, n: Reply(status=500))
    registration = register(host, server.url(), topic="user_logged_in", secret=secret)
    client = host.app.test_client()
    with host.app.app_context():
        host.webhooks.trigger("user_logged_in", {"u": 1})
        host.webhooks.trigger("profile_updated", {"u": 1})
    client.post(
        f"{PREFIX}/registrations",
        json={"topic": "user_logged_in", "url": server.url(), "secret": secret},
        headers=ADMIN,
    )  # 409
    client.post(
        f"{PREFIX}/registrations/{registration['id']}/rotate-secret",
        json={"secret": secret[::-1], "rev": registration["rev"]},
        headers=ADMIN,
    )
    client.post(
        f"{PREFIX}/registrations", json={"topic": "x", "url": "u", "secret": secret}, headers=ADMIN
    )  # 422
    run = host.app.test_cli_runner().invoke(args=["webhooks", "list"])
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for record in caplog.records:
        assert secret not in record.getMessage() and secret[::-1] not in record.getMessage()
    assert secret not in run.output
    with host.app.app_context():
        from flask_kaizen_webhooks import get_state
        from flask_kaizen_webhooks.storage import registrations

        session = get_state().database.session
        stored = registrations.get_registration(
            session, owner="org-1", registration_id=registration["id"]
        )
        assert secret not in repr(stored) and secret[::-1] not in repr(stored)
