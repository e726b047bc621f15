"""The registration API: every status code, owner isolation, revs, pagination, secrets."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import ADMIN, OTHER_ADMIN

PREFIX = "/v2/webhooks"
SECRET = "signature_secret_0123456789"


def registration(**overrides: Any) -> dict[str, Any]:
    document = {
        "topic": "profile_updated",
        "url": "https://hooks.example.com/profile_updated",
        "secret": SECRET,
    }
    document.update(overrides)
    return {k: v for k, v in document.items() if v is not None}


def create(client: FlaskClient, headers: dict[str, str] = ADMIN, **overrides: Any) -> Any:
    return client.post(f"{PREFIX}/registrations", json=registration(**overrides), headers=headers)


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "field"} <= set(body["error"])
    return dict(body["error"])


def test_create_returns_id_rev_and_location(client: FlaskClient) -> None:
    response = create(client)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "rev"}
    assert body["rev"].startswith("1-") and len(body["rev"].split("-", 1)[1]) == 32
    assert response.headers["Location"] == f"{PREFIX}/registrations/{body['id']}"
    fetched = client.get(response.headers["Location"], headers=ADMIN)
    assert fetched.status_code == 200
    assert fetched.get_json() == {
        "id": body["id"],
        "rev": body["rev"],
        "topic": "profile_updated",
        "url": "https://hooks.example.com/profile_updated",
        "state": "active",
        "disabled_reason": None,
        "ordering": "none",
        "max_per_second": None,
        "secret_version": 1,
        "previous_secret_valid_until": None,
        "created_at": fetched.get_json()["created_at"],
        "updated_at": fetched.get_json()["updated_at"],
    }
    assert fetched.headers["ETag"] == f'"{body["rev"]}"'


def test_list_is_scoped_to_owner_and_filters_by_topic(client: FlaskClient) -> None:
    mine_profile = create(client).get_json()["id"]
    mine_booking = create(client, topic="booking_updated").get_json()["id"]
    create(client, OTHER_ADMIN)
    listed = client.get(f"{PREFIX}/registrations", headers=ADMIN).get_json()
    assert [item["id"] for item in listed["items"]] == [mine_profile, mine_booking]
    assert listed["next_cursor"] is None
    filtered = client.get(f"{PREFIX}/registrations?topic=booking_updated", headers=ADMIN)
    assert [item["id"] for item in filtered.get_json()["items"]] == [mine_booking]


def test_pagination_walks_every_item_once(client: FlaskClient) -> None:
    created = [create(client, url=f"https://h.example.com/{i}").get_json()["id"] for i in range(7)]
    seen: list[str] = []
    url = f"{PREFIX}/registrations?limit=3"
    pages = 0
    while True:
        page = client.get(url, headers=ADMIN).get_json()
        pages += 1
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        url = f"{PREFIX}/registrations?limit=3&cursor={page['next_cursor']}"
    assert seen == created
    assert pages == 3


def test_tampered_or_foreign_cursor_is_400(client: FlaskClient) -> None:
    for i in range(3):
        create(client, url=f"https://h.example.com/{i}")
    cursor = client.get(f"{PREFIX}/registrations?limit=1", headers=ADMIN).get_json()["next_cursor"]
    assert cursor
    tampered = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    for bad in (tampered, "garbage", cursor + "x"):
        response = client.get(f"{PREFIX}/registrations?cursor={bad}", headers=ADMIN)
        assert response.status_code == 400
        assert error_of(response)["code"] == "invalid_cursor"
    # A valid cursor from another owner's (or another filter's) listing is refused too.
    foreign = client.get(f"{PREFIX}/registrations?cursor={cursor}", headers=OTHER_ADMIN)
    assert foreign.status_code == 400
    other_filter = client.get(
        f"{PREFIX}/registrations?topic=booking_updated&cursor={cursor}", headers=ADMIN
    )
    assert other_filter.status_code == 400


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "201", "1.5"])
def test_bad_limit_is_422(client: FlaskClient, limit: str) -> None:
    response = client.get(f"{PREFIX}/registrations?limit={limit}", headers=ADMIN)
    assert response.status_code == 422
    assert error_of(response)["field"] == "limit"


def test_other_owners_registration_is_indistinguishable_from_missing(client: FlaskClient) -> None:
    created = create(client).get_json()
    url = f"{PREFIX}/registrations/{created['id']}"
    missing = f"{PREFIX}/registrations/00000000-0000-0000-0000-000000000000"
    for target in (url, missing):
        responses = [
            client.get(target, headers=OTHER_ADMIN),
            client.put(target, json=registration(rev=created["rev"]), headers=OTHER_ADMIN),
            client.delete(f"{target}?rev={created['rev']}", headers=OTHER_ADMIN),
        ]
        for response in responses:
            assert response.status_code == 404
            assert response.get_json() == {
                "error": {"code": "not_found", "message": "No such registration.", "field": None}
            }
    assert client.get(url, headers=ADMIN).status_code == 200


def test_update_with_current_rev_in_body_or_if_match(client: FlaskClient) -> None:
    created = create(client).get_json()
    url = f"{PREFIX}/registrations/{created['id']}"
    first = client.put(
        url, json=registration(rev=created["rev"], url="https://new.example.com/a"), headers=ADMIN
    )
    assert first.status_code == 200
    rev2 = first.get_json()["rev"]
    assert first.get_json() == {"id": created["id"], "rev": rev2}
    assert rev2.startswith("2-") and rev2 != created["rev"]
    second = client.put(
        url,
        json=registration(topic="booking_updated"),
        headers={**ADMIN, "If-Match": f'"{rev2}"'},
    )
    assert second.status_code == 200
    assert second.get_json()["rev"].startswith("3-")
    current = client.get(url, headers=ADMIN).get_json()
    assert current["topic"] == "booking_updated"
    assert current["url"] == "https://hooks.example.com/profile_updated"


@pytest.mark.parametrize("sent", [None, "stale"])
def test_update_with_missing_or_stale_rev_is_409_naming_current(
    client: FlaskClient, sent: str | None
) -> None:
    created = create(client).get_json()
    url = f"{PREFIX}/registrations/{created['id']}"
    rev = None
    if sent == "stale":
        rev = created["rev"]
        assert client.put(url, json=registration(rev=rev), headers=ADMIN).status_code == 200
    current = client.get(url, headers=ADMIN).get_json()["rev"]
    response = client.put(url, json=registration(rev=rev), headers=ADMIN)
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "rev_conflict"
    assert error["current_rev"] == current
    assert current in error["message"]


def test_update_may_omit_secret_to_keep_it(host: Any, client: FlaskClient) -> None:
    from flask_kaizen_webhooks.storage import registrations

    created = create(client).get_json()
    url = f"{PREFIX}/registrations/{created['id']}"
    response = client.put(url, json=registration(rev=created["rev"], secret=None), headers=ADMIN)
    assert response.status_code == 200
    new_secret = "another_secret_abcdefghij"
    response = client.put(
        url, json=registration(rev=response.get_json()["rev"], secret=new_secret), headers=ADMIN
    )
    assert response.status_code == 200
    with host.app.app_context():
        from flask_kaizen_webhooks import get_state

        session = get_state().database.session
        stored = registrations.get_registration(
            session, owner="org-1", registration_id=created["id"]
        )
        assert stored.secret != new_secret  # sealed at rest
        assert get_state().secrets.open(stored.secret) == new_secret


def test_delete_needs_current_rev(client: FlaskClient) -> None:
    created = create(client).get_json()
    url = f"{PREFIX}/registrations/{created['id']}"
    missing_rev = client.delete(url, headers=ADMIN)
    assert missing_rev.status_code == 409
    assert error_of(missing_rev)["current_rev"] == created["rev"]
    stale = client.delete(f"{url}?rev=1-00000000000000000000000000000000", headers=ADMIN)
    assert stale.status_code == 409
    deleted = client.delete(f"{url}?rev={created['rev']}", headers=ADMIN)
    assert deleted.status_code == 200
    assert deleted.get_json() == {"id": created["id"], "rev": created["rev"], "deleted": True}
    assert client.get(url, headers=ADMIN).status_code == 404
    # If-Match works as well.
    again = create(client).get_json()
    by_header = client.delete(
        f"{PREFIX}/registrations/{again['id']}", headers={**ADMIN, "If-Match": again["rev"]}
    )
    assert by_header.status_code == 200


def test_conflicting_revs_in_one_request_are_422(client: FlaskClient) -> None:
    created = create(client).get_json()
    response = client.put(
        f"{PREFIX}/registrations/{created['id']}",
        json=registration(rev=created["rev"]),
        headers={**ADMIN, "If-Match": '"1-other"'},
    )
    assert response.status_code == 422
    assert error_of(response)["code"] == "ambiguous_rev"


def test_duplicate_is_409_with_existing_id(client: FlaskClient) -> None:
    first = create(client).get_json()
    response = create(client)
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "duplicate_registration"
    assert error["existing_id"] == first["id"]
    # Another owner may register the same URL; the same owner another topic.
    assert create(client, OTHER_ADMIN).status_code == 201
    assert create(client, topic="booking_updated").status_code == 201
    # An update that would duplicate another registration is refused the same way.
    other = create(client, url="https://hooks.example.com/other").get_json()
    clash = client.put(
        f"{PREFIX}/registrations/{other['id']}", json=registration(rev=other["rev"]), headers=ADMIN
    )
    assert clash.status_code == 409
    assert error_of(clash)["existing_id"] == first["id"]


def test_topics_lists_modes_descriptions_and_samples(client: FlaskClient) -> None:
    response = client.get(f"{PREFIX}/topics", headers=ADMIN)
    assert response.status_code == 200
    topics = {topic["name"]: topic for topic in response.get_json()["topics"]}
    assert {name: topic["mode"] for name, topic in topics.items()} == {
        "user_logged_in": "sync",
        "user_registered": "sync",
        "profile_updated": "async",
        "booking_updated": "async",
        "booking_state_changed": "async",
    }
    assert all(topic["description"] for topic in topics.values())
    assert topics["profile_updated"]["sample_payload"] == {
        "auditLog": [],
        "id": "profile_org_id",
        "email": "john@doe.com",
        "rev": "1-1324",
        "firstName": "John",
        "lastName": "Doe",
        "userFields": [],
    }


def test_secret_never_appears_in_any_response(client: FlaskClient) -> None:
    responses = []
    created = create(client)
    responses.append(created)
    rid, rev = created.get_json()["id"], created.get_json()["rev"]
    url = f"{PREFIX}/registrations/{rid}"
    responses.append(create(client))  # duplicate
    responses.append(client.get(url, headers=ADMIN))
    responses.append(client.get(f"{PREFIX}/registrations", headers=ADMIN))
    updated = client.put(url, json=registration(rev=rev), headers=ADMIN)
    responses.append(updated)
    responses.append(client.put(url, json=registration(rev=rev), headers=ADMIN))  # stale
    responses.append(client.put(url, json=registration(rev=rev, bogus=1), headers=ADMIN))
    responses.append(client.delete(f"{url}?rev={updated.get_json()['rev']}", headers=ADMIN))
    assert [r.status_code for r in responses] == [201, 409, 200, 200, 200, 409, 422, 200]
    for response in responses:
        assert SECRET not in response.get_data(as_text=True)
        assert all(SECRET not in value for _, value in response.headers)


# Bad input -----------------------------------------------------------------------------------


def post_raw(client: FlaskClient, data: bytes | str, content_type: str = "application/json") -> Any:
    return client.post(
        f"{PREFIX}/registrations", data=data, content_type=content_type, headers=ADMIN
    )


@pytest.mark.parametrize(
    "body", [b"{", b"not json", b'{"a": NaN}', b"\xff\xfe", b"", b"[" * 5_000 + b"]" * 5_000]
)
def test_malformed_json_is_400(client: FlaskClient, body: bytes) -> None:
    response = post_raw(client, body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


@pytest.mark.parametrize("body", ["[]", '"text"', "42", "null", "true"])
def test_json_that_is_not_an_object_is_400(client: FlaskClient, body: str) -> None:
    response = post_raw(client, body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_body"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(client: FlaskClient, content_type: str) -> None:
    response = post_raw(client, json.dumps(registration()), content_type)
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_body_over_limit_is_413(make_host: Any) -> None:
    client = make_host("sqlite", KAIZEN_WEBHOOKS_MAX_BODY_BYTES=200).app.test_client()
    big = json.dumps(registration(url="https://h.example.com/" + "a" * 300))
    response = post_raw(client, big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"


def test_streamed_body_over_limit_is_413_on_a_real_server(make_host: Any, serve: Any) -> None:
    base = serve(make_host("sqlite", KAIZEN_WEBHOOKS_MAX_BODY_BYTES=200).app)
    big = json.dumps(registration(url="https://h.example.com/" + "a" * 300)).encode()
    small = json.dumps(registration()).encode()
    for body, status in ((big, 413), (small, 201)):
        # Chunked transfer: no Content-Length, so only the capped read can catch it.
        connection = http.client.HTTPConnection(base.host, base.port, timeout=10)
        connection.putrequest("POST", f"{PREFIX}/registrations")
        connection.putheader("Authorization", ADMIN["Authorization"])
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for start in range(0, len(body), 64):
            chunk = body[start : start + 64]
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        assert response.status == status, response.read()
        connection.close()


def test_unknown_topic_lists_valid_topics(client: FlaskClient) -> None:
    response = create(client, topic="profile_uploaded")
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "unknown_topic"
    assert error["field"] == "topic"
    assert error["valid_topics"] == [
        "user_logged_in",
        "user_registered",
        "profile_updated",
        "booking_updated",
        "booking_state_changed",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "/relative/path",
        "hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "javascript:alert(1)",
        "https://",
        "https:///path-only",
        "https://user:pass@hooks.example.com/x",
        "https://user@hooks.example.com/x",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com:0/x",
        "https://hooks.example.com/with space",
        "https://hooks.example.com/\nnewline",
        "https://h.example.com/" + "a" * 2030,
    ],
)
def test_bad_url_is_422(client: FlaskClient, url: str) -> None:
    response = create(client, url=url)
    assert response.status_code == 422
    error = error_of(response)
    assert (error["code"], error["field"]) == ("invalid_url", "url")


def test_url_of_exactly_2048_characters_is_accepted(client: FlaskClient) -> None:
    url = "https://h.example.com/"
    assert create(client, url=url + "a" * (2048 - len(url))).status_code == 201


def test_plain_http_needs_allow_http(make_host: Any) -> None:
    strict = make_host("sqlite").app.test_client()
    response = create(strict, url="http://hooks.example.com/x")
    assert response.status_code == 422
    assert error_of(response)["code"] == "http_not_allowed"
    relaxed = make_host("sqlite", KAIZEN_WEBHOOKS_ALLOW_HTTP=True).app.test_client()
    assert create(relaxed, url="http://hooks.example.com/x").status_code == 201


@pytest.mark.parametrize(
    ("secret", "code"),
    [
        (None, "missing_field"),
        ("short", "invalid_secret"),
        ("x" * 15, "invalid_secret"),
        ("x" * 257, "invalid_secret"),
        ('{"a": 1, "bb": 22222}', "invalid_secret"),
        ("12345678901234567890", "invalid_secret"),
        ('"quoted-string-secret"', "invalid_secret"),
        ("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0B\n", "invalid_secret"),
        ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC", "invalid_secret"),
        (12345678901234567890, "invalid_type"),
    ],
)
def test_bad_secret_is_422(client: FlaskClient, secret: Any, code: str) -> None:
    response = create(client, secret=secret)
    assert response.status_code == 422
    error = error_of(response)
    assert (error["code"], error["field"]) == (code, "secret")


def test_secret_length_bounds_are_inclusive(client: FlaskClient) -> None:
    assert create(client, secret="s" * 16).status_code == 201
    assert create(client, secret="s" * 256, topic="booking_updated").status_code == 201


@pytest.mark.parametrize(
    ("document", "code", "field"),
    [
        ({"url": "https://h.example.com/", "secret": SECRET}, "missing_field", "topic"),
        ({"topic": "profile_updated", "secret": SECRET}, "missing_field", "url"),
        ({**registration(), "extra": 1}, "unknown_field", "extra"),
        ({**registration(), "rev": "1-abc"}, "unknown_field", "rev"),
        ({**registration(), "topic": 7}, "invalid_type", "topic"),
        ({**registration(), "url": ["https://h.example.com/"]}, "invalid_type", "url"),
    ],
)
def test_missing_unknown_and_mistyped_fields_are_422(
    client: FlaskClient, document: dict[str, Any], code: str, field: str
) -> None:
    response = client.post(f"{PREFIX}/registrations", json=document, headers=ADMIN)
    assert response.status_code == 422
    error = error_of(response)
    assert (error["code"], error["field"]) == (code, field)


def test_bad_input_on_update_is_checked_like_create(client: FlaskClient) -> None:
    created = create(client).get_json()
    url = f"{PREFIX}/registrations/{created['id']}"
    cases = [
        (registration(rev=created["rev"], topic="nope"), 422),
        (registration(rev=created["rev"], url="ftp://x"), 422),
        (registration(rev=created["rev"], secret="short"), 422),
        (registration(rev=created["rev"], extra=True), 422),
        ({"rev": created["rev"], "url": "https://h.example.com/"}, 422),
    ]
    for document, status in cases:
        assert client.put(url, json=document, headers=ADMIN).status_code == status
    assert (
        client.put(url, data="[", content_type="application/json", headers=ADMIN).status_code == 400
    )
    assert client.put(url, data="{}", content_type="text/plain", headers=ADMIN).status_code == 415
    # Nothing of the refused updates was applied.
    assert client.get(url, headers=ADMIN).get_json()["rev"] == created["rev"]


def test_unknown_endpoint_and_method_are_json(client: FlaskClient) -> None:
    missing = client.get(f"{PREFIX}/nothing-here", headers=ADMIN)
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    wrong_method = client.patch(f"{PREFIX}/registrations", headers=ADMIN)
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["code"] == "method_not_allowed"
    assert wrong_method.headers["Allow"] == "GET, POST"


def test_registrations_per_owner_are_limited(make_host: Any) -> None:
    client = make_host("sqlite", KAIZEN_WEBHOOKS_MAX_REGISTRATIONS_PER_OWNER=2).app.test_client()
    assert create(client, url="https://h.example.com/1").status_code == 201
    assert create(client, url="https://h.example.com/2").status_code == 201
    third = create(client, url="https://h.example.com/3")
    assert third.status_code == 422
    assert (error_of(third)["code"], error_of(third)["limit"]) == ("registration_limit", 2)
    assert create(client, OTHER_ADMIN).status_code == 201  # another owner has their own quota


@pytest.mark.parametrize("limit", ["0", "x", "-1", "1.5", "\u00b2", "\u0661", "99999"])
def test_a_bad_limit_is_422(client: FlaskClient, limit: str) -> None:
    response = client.get(f"{PREFIX}/registrations", query_string={"limit": limit}, headers=ADMIN)
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_limit"
