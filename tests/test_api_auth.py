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
