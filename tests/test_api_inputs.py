"""Untrusted text in every input the API reads: characters no field can hold (NUL, unpaired
surrogates), numbers too long to read, and host names in every Unicode spelling."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from flask.testing import FlaskClient

from flask_kaizen_webhooks.delivery.client import route
from flask_kaizen_webhooks.guard import AddressPolicy
from tests.clients import client
from tests.conftest import ADMIN

PREFIX = "/v2/webhooks"
SECRET = "signature_secret_0123456789"
#: Characters no stored text may hold: PostgreSQL refuses NUL, UTF-8 has no lone surrogates.
UNSTORABLE = ["\x00", "\ud800", "\udfff"]
GOOD = {"topic": "profile_updated", "url": "https://hooks.example.com/x", "secret": SECRET}


def wide(text: str) -> str:
    """``text`` in fullwidth forms, which IDNA maps back to ASCII."""
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


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
    # NUL, bytes that are not UTF-8 (read as U+FFFD), more than a UUID's length: no id the
    # extension makes looks like that.
    for segment in ("%00", "a%00b", "%ED%A0%80", "%FF", "%C3%A9", "9" * 5_000, "a" * 37):
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


# Internationalized host names -------------------------------------------------------------------
# Fullwidth forms are written with wide(), other look-alikes as escapes, so the source stays
# readable: "\u3002" and "\uff61" are ideographic and halfwidth full stops, "\u202e" turns the
# text right to left.


def test_an_internationalized_host_is_stored_in_its_ascii_form(client: FlaskClient) -> None:
    for url, stored in (
        ("https://bücher.example/x?q=é", "https://xn--bcher-kva.example/x?q=é"),
        ("https://BÜCHER.example:443/y", "https://xn--bcher-kva.example:443/y"),
        ("https://例え.テスト/hook", "https://xn--r8jz45g.xn--zckzah/hook"),
        (f"https://{wide('example')}\uff0e{wide('com')}/", "https://example.com/"),
    ):
        response = client.post(f"{PREFIX}/registrations", json={**GOOD, "url": url}, headers=ADMIN)
        assert response.status_code == 201, response.get_json()
        fetched = client.get(response.headers["Location"], headers=ADMIN).get_json()
        assert fetched["url"] == stored
    # The same host in two spellings is the same registration.
    again = client.post(
        f"{PREFIX}/registrations",
        json={**GOOD, "url": "https://xn--bcher-kva.example/x?q=é"},
        headers=ADMIN,
    )
    assert again.status_code == 409


@pytest.mark.parametrize(
    "url",
    [
        f"http://{wide('localhost')}/",
        f"http://{wide('LOCALHOST')}./",
        f"http://{wide('localhost')}:8080/",
        f"http://hooks.{wide('local')}/",
        "http://127\u30020\u30020\u30021/",
        f"http://{wide('127.0.0.1')}/",
        f"http://{wide('0x7f000001')}/",
        f"http://{wide('169.254.169.254')}/latest/meta-data/",
        "http://10\uff610\uff610\uff611/",
    ],
)
def test_unicode_spellings_of_forbidden_hosts_are_refused(make_host: Any, url: str) -> None:
    client = make_host("sqlite", KAIZEN_WEBHOOKS_ALLOW_HTTP=True).app.test_client()
    response = client.post(f"{PREFIX}/registrations", json={**GOOD, "url": url}, headers=ADMIN)
    assert response.status_code == 422, url
    error = error_of(response)
    assert (error["code"], error["field"]) == ("forbidden_address", "url"), url


@pytest.mark.parametrize(
    "url",
    [
        "https://a\u200db.example/",  # a joiner outside its allowed context
        "https://bü_cher.example/",
        f"https://b{wide('%')}c.example/",
        "https://\u202eevil.example/",
        "https://-bücher.example/",
        "https://" + "é" * 64 + ".example/",
        "https://\u0661\u0662\u0663.example/",  # Arabic-Indic digits: a right-to-left label
    ],
)
def test_a_host_that_is_not_valid_idna_is_refused(client: FlaskClient, url: str) -> None:
    response = client.post(f"{PREFIX}/registrations", json={**GOOD, "url": url}, headers=ADMIN)
    assert response.status_code == 422, url
    assert (error_of(response)["code"], error_of(response)["field"]) == ("invalid_url", "url")


def test_a_route_to_an_internationalized_host_is_ascii() -> None:
    bucher = route("http://bücher.example/a")
    assert (bucher.host, bucher.url) == ("xn--bcher-kva.example", "http://xn--bcher-kva.example/a")
    japanese = route("https://例え.テスト:8443/")
    assert japanese.host == "xn--r8jz45g.xn--zckzah"
    assert japanese.url == "https://xn--r8jz45g.xn--zckzah:8443/"
    assert route(f"http://{wide('127.0.0.1')}/").host == "127.0.0.1"
    with pytest.raises(ValueError, match="internationalized"):
        route("http://a\u200db.example/")


@pytest.mark.parametrize(
    ("name", "ascii_name"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        (f"{wide('example')}.com", "example.com"),
    ],
)
def test_a_stored_internationalized_url_goes_out_with_an_ascii_host(
    receiver: Any, name: str, ascii_name: str
) -> None:
    """The name is looked up, and sent in ``Host``, in its ASCII form; the lookup answers with
    the test receiver's address."""
    server = receiver()
    port = server.server.server_port
    looked_up: list[str] = []

    def resolver(host: str, _port: int) -> list[Any]:
        looked_up.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    transport = client(policy=policy, resolver=resolver)
    result = transport.post(f"http://{name}:{port}/hook", b"{}", {}, timeout=5)
    assert result.ok, result
    assert looked_up == [ascii_name]
    assert server.received[0].headers["Host"] == f"{ascii_name}:{port}"
