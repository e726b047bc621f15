"""Untrusted text in every input the API reads: characters no field can hold (NUL, unpaired
surrogates) and numbers too long to read."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import ADMIN

PREFIX = "/v2/webhooks"
SECRET = "signature_secret_0123456789"
#: Characters no stored text may hold: PostgreSQL refuses NUL, UTF-8 has no lone surrogates.
UNSTORABLE = ["\x00", "\ud800", "\udfff"]
GOOD = {"topic": "profile_updated", "url": "https://hooks.example.com/x", "secret": SECRET}


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "field"} <= set(body["error"])
    return dict(body["error"])


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The embedded SQLite file and PostgreSQL (which refuses NUL in text)."""
    return str(request.param)


@pytest.fixture
def created(client: FlaskClient) -> dict[str, str]:
    response = client.post(f"{PREFIX}/registrations", json=GOOD, headers=ADMIN)
    assert response.status_code == 201
    return dict(response.get_json())


@pytest.mark.parametrize(
    ("method", "path", "document", "field"),
    [
        ("POST", "/registrations", GOOD, "topic"),
        ("POST", "/registrations", GOOD, "url"),
        ("POST", "/registrations", GOOD, "secret"),
        ("PUT", "/registrations/{id}", {**GOOD, "rev": "{rev}"}, "rev"),
        ("PUT", "/registrations/{id}", {**GOOD, "rev": "{rev}", "state": "active"}, "state"),
        ("PUT", "/registrations/{id}", {**GOOD, "rev": "{rev}"}, "secret"),
        ("POST", "/registrations/{id}/rotate-secret", {"rev": "{rev}", "secret": SECRET}, "secret"),
        ("POST", "/registrations/{id}/rotate-secret", {"rev": "{rev}"}, "rev"),
        ("POST", "/test", {"topic": "profile_updated", "registration_id": "{id}"}, "topic"),
        (
            "POST",
            "/test",
            {"topic": "profile_updated", "registration_id": "{id}"},
            "registration_id",
        ),
    ],
)
def test_a_json_field_holding_unstorable_text_is_422_naming_it(
    client: FlaskClient,
    created: dict[str, str],
    method: str,
    path: str,
    document: dict[str, str],
    field: str,
) -> None:
    for bad in UNSTORABLE:
        filled = {key: value.format(**created) for key, value in document.items()}
        filled[field] = filled[field][:8] + bad + filled[field][8:]
        response = client.open(
            PREFIX + path.format(**created), method=method, json=filled, headers=ADMIN
        )
        assert response.status_code == 422, (bad, response.get_json())
        assert (error_of(response)["code"], error_of(response)["field"]) == (
            "invalid_characters",
            field,
        )
    # Nothing was changed.
    assert (
        client.get(f"{PREFIX}/registrations/{created['id']}", headers=ADMIN).get_json()["rev"]
        == created["rev"]
    )


@pytest.mark.parametrize("bad", UNSTORABLE)
def test_an_unknown_field_name_holding_unstorable_text_is_named_safely(
    client: FlaskClient, bad: str
) -> None:
    response = client.post(f"{PREFIX}/registrations", json={**GOOD, f"x{bad}": 1}, headers=ADMIN)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "unknown_field"
    assert error["field"] == "x" + ascii(bad)[1:-1]
    response.get_data().decode("utf-8")  # the answer itself is valid UTF-8


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/registrations/{}", "registration_id"),
        ("PUT", "/registrations/{}", "registration_id"),
        ("DELETE", "/registrations/{}", "registration_id"),
        ("POST", "/registrations/{}/rotate-secret", "registration_id"),
        ("GET", "/registrations/{}/deliveries", "registration_id"),
        ("GET", "/deliveries/{}", "delivery_id"),
        ("POST", "/deliveries/{}/redeliver", "delivery_id"),
    ],
)
def test_a_path_id_no_id_can_be_is_404_naming_it(
    client: FlaskClient, method: str, path: str, field: str
) -> None:
    # NUL, and bytes that are not UTF-8 (read as U+FFFD): no id the extension makes has them.
    for segment in ("%00", "a%00b", "%ED%A0%80", "%FF", "%C3%A9"):
        response = client.open(
            PREFIX + path.format(segment), method=method, json={"rev": "1-x"}, headers=ADMIN
        )
        assert response.status_code == 404, segment
        error = error_of(response)
        assert (error["code"], error["field"]) == ("not_found", field), segment


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("topic=%00", "topic"),
        ("topic=profile_updated%00", "topic"),
        ("cursor=%00", "cursor"),
        ("limit=1%00", "limit"),
    ],
)
def test_a_query_argument_holding_unstorable_text_is_422_naming_it(
    client: FlaskClient, query: str, field: str
) -> None:
    response = client.get(f"{PREFIX}/registrations?{query}", headers=ADMIN)
    assert response.status_code == 422
    assert (error_of(response)["code"], error_of(response)["field"]) == (
        "invalid_characters",
        field,
    )


def test_query_arguments_the_api_does_not_read_are_ignored(client: FlaskClient) -> None:
    response = client.get(f"{PREFIX}/registrations?other=%00", headers=ADMIN)
    assert response.status_code == 200


@pytest.mark.parametrize("bad", UNSTORABLE)
def test_a_rev_holding_unstorable_text_is_422_in_the_query_and_if_match(
    client: FlaskClient, created: dict[str, str], bad: str
) -> None:
    url = f"{PREFIX}/registrations/{created['id']}"
    responses = [client.delete(url, headers={**ADMIN, "If-Match": f'"1-{bad}"'})]
    if bad == "\x00":  # the test client cannot send a lone surrogate in a URL
        responses.append(client.delete(f"{url}?rev=1-%00", headers=ADMIN))
    for response in responses:
        assert response.status_code == 422
        assert (error_of(response)["code"], error_of(response)["field"]) == (
            "invalid_characters",
            "rev",
        )
    assert client.get(url, headers=ADMIN).status_code == 200


@pytest.mark.parametrize("limit", ["9" * 5_000, "1" * 4_301, "0" * 4_000 + "9" * 400])
def test_a_limit_of_thousands_of_digits_is_422(
    client: FlaskClient, created: dict[str, str], limit: str
) -> None:
    for path in ("/registrations", f"/registrations/{created['id']}/deliveries"):
        response = client.get(f"{PREFIX}{path}", query_string={"limit": limit}, headers=ADMIN)
        assert response.status_code == 422
        assert (error_of(response)["code"], error_of(response)["field"]) == (
            "invalid_limit",
            "limit",
        )
    padded = client.get(f"{PREFIX}/registrations?limit={'0' * 5_000}1", headers=ADMIN)
    assert padded.status_code == 200
    assert len(padded.get_json()["items"]) == 1


def test_a_number_of_thousands_of_digits_in_the_body_names_its_field(
    client: FlaskClient, created: dict[str, str]
) -> None:
    url = f"{PREFIX}/registrations/{created['id']}/rotate-secret"
    for number in ("9" * 5_000, "-" + "9" * 5_000, "1e999999"):
        body = f'{{"rev": "{created["rev"]}", "overlap_seconds": {number}}}'
        response = client.post(url, data=body, content_type="application/json", headers=ADMIN)
        assert response.status_code == 422
        assert (error_of(response)["code"], error_of(response)["field"]) == (
            "invalid_overlap",
            "overlap_seconds",
        )
        body = f'{{"topic": {number}, "url": "https://h.example.com/", "secret": "{SECRET}"}}'
        response = client.post(
            f"{PREFIX}/registrations", data=body, content_type="application/json", headers=ADMIN
        )
        assert response.status_code == 422
        assert (error_of(response)["code"], error_of(response)["field"]) == (
            "invalid_type",
            "topic",
        )
