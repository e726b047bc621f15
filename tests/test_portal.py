"""The integrator portal through Flask's test client: links, sessions and their refusals, CSRF,
owner isolation, every page and action, and paging through many deliveries. The same flows in
a real browser are in ``test_portal_browser.py``."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jose.jws
import pytest
from flask import request
from flask.testing import FlaskClient
from sqlalchemy import event, insert, text

from flask_kaizen_webhooks import ConfigurationError, KaizenWebhooks, WebhooksError, get_state
from flask_kaizen_webhooks.portal import access
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import ADMIN, DELIVERY_CONFIG, OTHER_ADMIN, FrozenClock, register
from tests.receivers import Reply, wait_until

PORTAL = "/v2/webhooks/portal"
LINKS = "/v2/webhooks/portal-links"
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@pytest.fixture(params=["sqlite", "postgres-hostdb"])
def host(make_host: Any, request: pytest.FixtureRequest) -> Any:
    """The extension in its embedded SQLite database, or in the host's PostgreSQL database
    through Flask-SQLAlchemy (its session shared with the host's)."""
    return make_host(request.param, **DELIVERY_CONFIG)


def enter(client: FlaskClient, headers: dict[str, str] = ADMIN) -> str:
    """Open the portal as the caller of ``headers`` with a link from the API; the link's path."""
    made = client.post(LINKS, headers=headers)
    assert made.status_code == 201, made.get_json()
    path = made.get_json()["url"].removeprefix("http://localhost")
    assert client.get(path).status_code == 200
    return path


def csrf_of(client: FlaskClient) -> str:
    found = CSRF.search(client.get(PORTAL + "/").text)
    assert found is not None
    return found.group(1)


def post(client: FlaskClient, path: str, **form: str) -> Any:
    """Send a portal form as its page would, with the session's CSRF token."""
    return client.post(PORTAL + path, data={"csrf_token": csrf_of(client), **form})


def registration_ids(host: Any, owner: str) -> list[str]:
    with host.app.app_context(), get_state().database.independent_session() as session:
        rows = session.execute(
            text(
                "SELECT id FROM kaizen_webhook_registrations WHERE owner = :o ORDER BY created_at"
            ),
            {"o": owner},
        )
        return [row[0] for row in rows]


def rev_of(host: Any, registration_id: str) -> str:
    with host.app.app_context(), get_state().database.independent_session() as session:
        return str(
            session.execute(
                text("SELECT rev FROM kaizen_webhook_registrations WHERE id = :i"),
                {"i": registration_id},
            ).scalar_one()
        )


# Links and sessions -----------------------------------------------------------------------------


def test_a_link_opens_a_session_scoped_to_the_portal_for_its_owner_only(
    host: Any, receiver: Any
) -> None:
    server = receiver()
    register(host, server.url("/mine"))
    register(host, server.url("/theirs"), headers=OTHER_ADMIN)
    client = host.app.test_client()
    made = client.post(LINKS, headers=ADMIN)
    assert made.status_code == 201
    link = made.get_json()
    expires_at = datetime.fromisoformat(link["expires_at"])
    assert 3590 <= (expires_at - datetime.now(UTC)).total_seconds() <= 3600
    assert link["url"].startswith("http://localhost/v2/webhooks/portal/enter?t=")

    entered = client.get(link["url"].removeprefix("http://localhost"))
    assert entered.status_code == 200
    cookie = entered.headers["Set-Cookie"]
    assert cookie.startswith(f"{access.COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Strict", f"Path={PORTAL}/"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http here; on https it is (see below)
    assert f'url={PORTAL}/"' in entered.text  # on to the endpoints, from a page of this site
    assert entered.headers["Referrer-Policy"] == "no-referrer"  # the token stays here

    page = client.get(PORTAL + "/")
    assert page.status_code == 200
    assert server.url("/mine") in page.text
    assert server.url("/theirs") not in page.text
    for name in ("Content-Security-Policy", "X-Frame-Options", "Cache-Control"):
        assert name in page.headers
    assert page.headers["Cache-Control"] == "no-store"

    secure = host.app.test_client().get(
        link["url"].replace("http://localhost", "https://localhost")
    )
    assert "Secure" in secure.headers["Set-Cookie"]


def test_the_cookie_is_https_only_when_the_hosts_public_address_is(make_host: Any) -> None:
    host = make_host("sqlite", KAIZEN_WEBHOOKS_PORTAL_BASE_URL="https://app.example")
    client = host.app.test_client()
    link = client.post(LINKS, headers=ADMIN).get_json()["url"]
    assert link.startswith("https://app.example/v2/webhooks/portal/enter?t=")
    entered = client.get(link.removeprefix("https://app.example"))  # over http, as a proxy asks
    assert "Secure" in entered.headers["Set-Cookie"]


def test_links_from_python_and_the_command_line(host: Any) -> None:
    webhooks: KaizenWebhooks = host.webhooks
    with host.app.app_context():
        link = webhooks.portal_link("org-1", expires_in=600, base_url="https://app.example")
        assert link.url.startswith("https://app.example/v2/webhooks/portal/enter?t=")
        assert 590 <= (link.expires_at - datetime.now(UTC)).total_seconds() <= 600
        with pytest.raises(WebhooksError, match="PORTAL_BASE_URL"):
            webhooks.portal_link("org-1")  # no request, no base URL, no SERVER_NAME
        with pytest.raises(ValueError, match="from 1 to 604800"):
            webhooks.portal_link("org-1", expires_in=0, base_url="https://app.example")
        with pytest.raises(ValueError, match="base URL"):
            webhooks.portal_link("org-1", base_url="ftp://app.example")
    client = host.app.test_client()
    assert client.get(link.url.removeprefix("https://app.example")).status_code == 200
    assert "Endpoints" in client.get(PORTAL + "/").text

    runner = host.app.test_cli_runner()
    done = runner.invoke(
        args=["webhooks", "portal-link", "org-1", "--base-url", "https://app.example"]
    )
    assert done.exit_code == 0, done.output
    url = done.stdout.strip()
    assert url.startswith("https://app.example/v2/webhooks/portal/enter?t=")
    assert "org-1" in done.stderr
    refused = runner.invoke(args=["webhooks", "portal-link", "org-1"])
    assert refused.exit_code == 1
    assert "KAIZEN_WEBHOOKS_PORTAL_BASE_URL" in refused.output


def test_a_link_is_bound_to_its_owner_and_its_end(host: Any) -> None:
    client = host.app.test_client()
    path = client.post(LINKS, headers=ADMIN).get_json()["url"].removeprefix("http://localhost")
    token = path.split("t=", 1)[1]
    payload, signature = token.rsplit(".", 1)
    data = json.loads(jose.utils.base64url_decode(payload.encode()))
    data["o"] = "org-2"  # another owner, with the signature of the first
    forged = jose.utils.base64url_encode(json.dumps(data).encode()).decode()
    for tampered in (f"{forged}.{signature}", token[:-2], token + "x", "", "not-a-token"):
        refused = host.app.test_client().get(f"{PORTAL}/enter?t={tampered}")
        assert refused.status_code == 403
        assert "not valid" in refused.text
        assert access.COOKIE not in refused.headers.get("Set-Cookie", "")

    state = get_state(host.app)
    state.clock = FrozenClock(time.time() + 3601)  # an hour and a second later
    expired = host.app.test_client().get(path)
    assert expired.status_code == 403
    assert "expired" in expired.text


def test_a_session_ends_when_its_link_expires_or_its_owner_signs_out(host: Any) -> None:
    client = host.app.test_client()
    path = enter(client)
    assert client.get(path).status_code == 200  # followed again while it lasts: fine
    other_device = host.app.test_client()
    assert other_device.get(path).status_code == 200

    signed_out = post(client, "/sign-out")
    assert signed_out.status_code == 200
    assert f"{access.COOKIE}=;" in signed_out.headers["Set-Cookie"]
    for browser in (client, other_device):
        refused = browser.get(PORTAL + "/")
        assert refused.status_code == 403
        assert "not signed in" in refused.text
    again = client.get(path)
    assert again.status_code == 403
    assert "sign out" in again.text

    later = host.app.test_client()
    enter(later)
    get_state(host.app).clock = FrozenClock(time.time() + 3601)
    assert later.get(PORTAL + "/").status_code == 403  # the session lasts as long as the link


def test_a_cookie_of_no_session_or_an_altered_one_opens_nothing(host: Any) -> None:
    for value in ("", "garbage", access.session_cookie(host.app, _grant("no-such-session"))):
        client = host.app.test_client()
        client.set_cookie(access.COOKIE, value, path=PORTAL + "/")
        refused = client.get(PORTAL + "/events")
        assert refused.status_code == 403
        assert "Event catalog" not in refused.text


def _grant(link_id: str) -> access.Grant:
    return access.Grant(link_id, "org-1", datetime.now(UTC) + timedelta(hours=1))


def test_every_form_needs_the_sessions_token_and_this_sites_origin(host: Any) -> None:
    client = host.app.test_client()
    enter(client)
    form = {"topic": "profile_updated", "url": "http://127.0.0.1:9/a", "secret": ""}
    token = csrf_of(client)
    stranger = host.app.test_client()
    enter(stranger)
    for sent in (
        {},
        {"csrf_token": ""},
        {"csrf_token": "0" * 64},
        {"csrf_token": csrf_of(stranger)},
    ):
        refused = client.post(PORTAL + "/endpoints", data={**form, **sent})
        assert refused.status_code == 403
        assert "security token" in refused.text
    from_elsewhere = client.post(
        PORTAL + "/endpoints",
        data={**form, "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert from_elsewhere.status_code == 403
    assert registration_ids(host, "org-1") == []  # nothing was made
    too_large = client.post(
        PORTAL + "/endpoints", data={**form, "csrf_token": token, "url": "x" * 20000}
    )
    assert too_large.status_code == 413
    assert "larger than any of the portal" in too_large.text
    made = client.post(
        PORTAL + "/endpoints",
        data={**form, "csrf_token": token},
        headers={"Origin": "https://localhost"},  # behind a proxy that ends TLS: the host counts
    )
    assert made.status_code == 201


# Endpoints --------------------------------------------------------------------------------------


def test_an_endpoint_made_in_the_portal_gets_webhooks_signed_with_the_secret_shown_once(
    host: Any, receiver: Any
) -> None:
    server = receiver()
    client = host.app.test_client()
    enter(client)
    page = client.get(PORTAL + "/")
    for topic in host.webhooks.topics.names():
        assert f'<option value="{topic}"' in page.text  # picked from the catalog
    made = post(client, "/endpoints", topic="profile_updated", url=server.url("/hook"), secret="")
    assert made.status_code == 201
    secret = re.search(r'id="new-secret"[^>]*>([^<]+)<', made.text)
    assert secret is not None
    [registration_id] = registration_ids(host, "org-1")
    assert secret.group(1) not in client.get(f"{PORTAL}/endpoints/{registration_id}").text

    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"id": "p-1"})
    server.wait_for(1)
    body = server.received[0].body.decode()
    assert json.loads(jose.jws.verify(body, secret.group(1), algorithms=["HS256"]))["id"] == "p-1"

    given = post(
        client,
        "/endpoints",
        topic="booking_updated",
        url=server.url("/b"),
        secret="my_secret_1234567",
    )
    assert given.status_code == 201
    assert "my_secret_1234567" not in given.text
    assert 'id="new-secret"' not in given.text


@pytest.mark.parametrize(
    ("form", "status", "says"),
    [
        ({"topic": "profile_uploaded", "url": "http://127.0.0.1:9/a"}, 422, "profile_updated"),
        ({"topic": "profile_updated", "url": "not a url"}, 422, "URL"),
        (
            {"topic": "profile_updated", "url": "http://127.0.0.1:9/a", "secret": "short"},
            422,
            "secret",
        ),
        ({"topic": "profile_updated", "url": "http://10.1.2.3/a"}, 422, "address"),
    ],
)
def test_a_bad_endpoint_is_refused_with_the_reason_and_the_form_kept(
    host: Any, form: dict[str, str], status: int, says: str
) -> None:
    client = host.app.test_client()
    enter(client)
    refused = post(client, "/endpoints", **form)
    assert refused.status_code == status
    assert 'role="alert"' in refused.text
    assert says in refused.text
    assert f'value="{form["url"]}"' in refused.text  # kept, to be corrected
    assert registration_ids(host, "org-1") == []


def test_enable_disable_rotate_and_delete_an_endpoint(host: Any, receiver: Any) -> None:
    server = receiver()
    rid = register(host, server.url("/a"))["id"]
    client = host.app.test_client()
    enter(client)
    here = f"/endpoints/{rid}"

    disabled = post(client, f"{here}/state", state="disabled", rev=rev_of(host, rid))
    assert disabled.status_code == 303
    page = client.get(disabled.headers["Location"])
    assert "is disabled" in page.text
    assert ">Enable<" in page.text
    stale = post(client, f"{here}/state", state="active", rev="1-00")
    assert stale.status_code == 409
    assert "changed meanwhile" in stale.text
    enabled = post(client, f"{here}/state", state="active", rev=rev_of(host, rid))
    assert "is enabled" in client.get(enabled.headers["Location"]).text

    rotated = post(client, f"{here}/rotate", rev=rev_of(host, rid))
    assert rotated.status_code == 200
    new_secret = re.search(r'id="new-secret"[^>]*>([^<]+)<', rotated.text)
    assert new_secret is not None
    assert "previous" in rotated.text and "Webhook-Signature-Next" in rotated.text
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"id": "p-2"})
    server.wait_for(1)
    request = server.received[0]
    header, _, signature = request.headers["Webhook-Signature-Next"].split(".")
    payload = request.body.decode().split(".")[1]
    jose.jws.verify(f"{header}.{payload}.{signature}", new_secret.group(1), algorithms=["HS256"])

    deleted = post(client, f"{here}/delete", rev=rev_of(host, rid))
    assert deleted.status_code == 303
    assert "was deleted" in client.get(deleted.headers["Location"]).text
    assert registration_ids(host, "org-1") == []


def test_a_test_webhook_shows_the_receivers_answer(host: Any, receiver: Any) -> None:
    server = receiver(lambda request, n: Reply(status=202, body=b'{"seen": "yes"}'))
    rid = register(host, server.url("/a"))["id"]
    # One minute for the per-owner limit, which counts this first test too.
    get_state(host.app).clock = FrozenClock(time.time())
    client = host.app.test_client()
    enter(client)
    tested = post(client, f"/endpoints/{rid}/test")
    assert tested.status_code == 200
    assert "answered <strong>202</strong>" in tested.text
    assert "&#34;seen&#34;: &#34;yes&#34;" in tested.text or '"seen": "yes"' in tested.text
    assert len(server.received) == 1
    limit = host.app.config["KAIZEN_WEBHOOKS_TEST_CALLS_PER_MINUTE"]
    answers = [post(client, f"/endpoints/{rid}/test").status_code for _ in range(limit)]
    assert answers[-1] == 429


# Deliveries -------------------------------------------------------------------------------------


def test_a_failed_delivery_shows_its_attempts_and_payload_and_is_redelivered(
    host: Any, receiver: Any
) -> None:
    failing = True
    server = receiver(
        lambda request, n: Reply(status=500, body=b"boom") if failing else Reply(status=200)
    )
    rid = register(host, server.url("/a"), secret="signature_secret_0123")["id"]
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"id": "p-3", "name": "Zoë"})
    client = host.app.test_client()
    enter(client)
    wait_until(lambda: "badge-failed" in client.get(f"{PORTAL}/endpoints/{rid}?status=failed").text)
    listed = client.get(f"{PORTAL}/endpoints/{rid}?status=failed").text
    assert f"/deliveries/{delivery_id}" in listed
    succeeded = client.get(f"{PORTAL}/endpoints/{rid}?status=succeeded").text
    assert f"/deliveries/{delivery_id}" not in succeeded

    page = client.get(f"{PORTAL}/deliveries/{delivery_id}").text
    assert page.count('class="attempt"') == 3  # the first attempt and two retries
    assert "answered 500" in page and "boom" in page
    assert "Zoë" in page and "webhook_request_id" in page
    assert "signature_secret_0123" not in page

    failing = False
    redelivered = post(client, f"/deliveries/{delivery_id}/redeliver")
    assert redelivered.status_code == 303
    wait_until(lambda: "answered 200" in client.get(f"{PORTAL}/deliveries/{delivery_id}").text)
    assert client.get(f"{PORTAL}/deliveries/{delivery_id}").text.count('class="attempt"') == 4


def test_another_owners_endpoints_and_deliveries_are_missing(host: Any, receiver: Any) -> None:
    server = receiver()
    theirs = register(host, server.url("/theirs"), headers=OTHER_ADMIN)["id"]
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"id": "p-4"})
    server.wait_for(1)
    client = host.app.test_client()
    enter(client)
    for path in (f"/endpoints/{theirs}", f"/deliveries/{delivery_id}", "/endpoints/nope"):
        missing = client.get(PORTAL + path)
        assert missing.status_code == 404
        assert server.url("/theirs") not in missing.text
    rev = rev_of(host, theirs)
    for path, form in (
        (f"/endpoints/{theirs}/state", {"state": "disabled", "rev": rev}),
        (f"/endpoints/{theirs}/rotate", {"rev": rev}),
        (f"/endpoints/{theirs}/delete", {"rev": rev}),
        (f"/endpoints/{theirs}/test", {}),
        (f"/deliveries/{delivery_id}/redeliver", {}),
    ):
        assert post(client, path, **form).status_code == 404
    assert rev_of(host, theirs) == rev  # nothing changed
    assert len(server.received) == 1  # nothing was sent
    assert client.get(f"{PORTAL}/endpoints/{'x' * 200}").status_code == 404


def test_ten_thousand_deliveries_are_read_a_page_at_a_time(make_host: Any, receiver: Any) -> None:
    host = make_host("sqlite", **DELIVERY_CONFIG)  # its query plan is read the SQLite way
    rid = register(host, receiver().url("/a"))["id"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "id": str(uuid.UUID(int=n)),
            "registration_id": rid,
            "owner": "org-1",
            "topic": "profile_updated",
            "mode": "async",
            "payload": "{}",
            "status": "failed" if n % 100 == 0 else "succeeded",
            "attempts": 1,
            "retry_index": 0,
            "created_at": start + timedelta(seconds=n),
            "updated_at": start + timedelta(seconds=n),
        }
        for n in range(10_000)
    ]
    with host.app.app_context():
        database = get_state().database
        with database.writing() as session:
            session.execute(insert(Delivery), rows)
    client = host.app.test_client()
    enter(client)

    statements: list[tuple[str, Any]] = []
    with host.app.app_context():
        engine = get_state().database.engine

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        first = client.get(f"{PORTAL}/endpoints/{rid}")
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert first.status_code == 200
    assert first.text.count("/deliveries/") == 25
    assert str(uuid.UUID(int=9_999)) in first.text  # the newest first
    [(listing, parameters)] = [
        (statement, parameters)
        for statement, parameters in statements
        if "ORDER BY kaizen_webhook_deliveries.created_at DESC" in statement
    ]
    assert "LIMIT" in listing
    with engine.connect() as connection:
        plan = " ".join(
            str(row[-1])
            for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {listing}", parameters)
        )
    assert "ix_kaizen_webhook_deliveries_registration" in plan  # along the index
    assert "TEMP B-TREE" not in plan  # in its order: no sort of the registration's rows

    seen: list[str] = []
    page = first
    for _ in range(3):
        seen += re.findall(r"/deliveries/([0-9a-f-]{36})", page.text)
        older = re.search(r'href="([^"]+)" rel="next"', page.text)
        assert older is not None
        page = client.get(older.group(1).replace("&amp;", "&"))
    assert seen == [str(uuid.UUID(int=n)) for n in range(9_999, 9_999 - 75, -1)]

    failed = client.get(f"{PORTAL}/endpoints/{rid}?status=failed")
    found = re.findall(r"/deliveries/([0-9a-f-]{36})", failed.text)
    assert found == [str(uuid.UUID(int=n)) for n in range(9_900, 9_900 - 2500, -100)][:25]
    tampered = client.get(f"{PORTAL}/endpoints/{rid}?before=abc")
    assert tampered.status_code == 400
    assert client.get(f"{PORTAL}/endpoints/{rid}?status=lost").status_code == 400


# The catalog, and turning it off ----------------------------------------------------------------


def test_the_catalog_shows_every_topic_and_code_that_verifies(host: Any) -> None:
    client = host.app.test_client()
    enter(client)
    page = client.get(PORTAL + "/events")
    for topic in host.webhooks.topics:
        assert f"<code>{topic.name}</code>" in page.text
        assert topic.description.split(",")[0].replace("'", "&#39;") in page.text
    assert "verifyWebhook" in page.text and "jose.jws.verify" in page.text

    namespace: dict[str, Any] = {}
    exec((access_snippet("python.txt")), namespace)  # the code shown verifies a real webhook
    body = jose.jws.sign({"id": "p-5"}, "signature_secret_0123", algorithm="HS256")
    assert namespace["verify_webhook"](body, "signature_secret_0123") == {"id": "p-5"}


def access_snippet(name: str) -> str:
    from importlib.resources import files

    return files("flask_kaizen_webhooks.portal").joinpath("snippets", name).read_text()


def test_the_portal_can_be_turned_off(make_host: Any) -> None:
    host = make_host("sqlite", KAIZEN_WEBHOOKS_PORTAL=False)
    client = host.app.test_client()
    assert client.post(LINKS, headers=ADMIN).status_code == 404
    for path in ("/enter?t=x", "/"):
        assert client.get(PORTAL + path, headers=ADMIN).status_code == 404  # no such endpoint
        assert client.get(PORTAL + path).status_code == 401  # the API's, asking who calls
    with host.app.app_context(), pytest.raises(WebhooksError, match="turned off"):
        host.webhooks.portal_link("org-1", base_url="https://app.example")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KAIZEN_WEBHOOKS_PORTAL", "yes"),
        ("KAIZEN_WEBHOOKS_PORTAL_LINK_SECONDS", 8 * 86400),
        ("KAIZEN_WEBHOOKS_PORTAL_LINK_SECONDS", 0),
        ("KAIZEN_WEBHOOKS_PORTAL_BASE_URL", "app.example.com"),
    ],
)
def test_bad_portal_settings_are_refused_by_name(make_host: Any, key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key):
        make_host("sqlite", **{key: value})


def test_an_api_link_lasts_as_asked_within_a_week(host: Any) -> None:
    client = host.app.test_client()
    made = client.post(LINKS, headers=ADMIN, json={"expires_in": 60})
    ends = datetime.fromisoformat(made.get_json()["expires_at"])
    assert 50 <= (ends - datetime.now(UTC)).total_seconds() <= 60
    assert client.post(LINKS, headers=ADMIN, json={"expires_in": None}).status_code == 201
    for bad in (0, 8 * 86400, "600", True):
        answer = client.post(LINKS, headers=ADMIN, json={"expires_in": bad})
        assert answer.status_code == 422
        assert answer.get_json()["error"]["code"] == "invalid_expires_in"
    unknown = client.post(LINKS, headers=ADMIN, json={"owner": "org-2"})
    assert unknown.status_code == 422  # the link is the caller's: no other owner can be named


def test_a_refused_redelivery_says_what_to_do_in_the_portals_words(
    host: Any, receiver: Any
) -> None:
    server = receiver()
    rid = register(host, server.url("/a"))["id"]
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"id": "p-6"})
    server.wait_for(1)
    client = host.app.test_client()
    enter(client)
    post(client, f"/endpoints/{rid}/state", state="disabled", rev=rev_of(host, rid))
    refused = post(client, f"/deliveries/{delivery_id}/redeliver")
    assert refused.status_code == 409
    assert "enable it first" in refused.text
    assert "PUT" not in refused.text


# The host's own request hooks, session and error handlers ---------------------------------------


def test_the_portal_leaves_the_hosts_hooks_session_and_error_handlers_alone(
    make_host: Any, receiver: Any
) -> None:
    # PostgreSQL: the host's pending insert holds SQLite's one write lock until it commits.
    host = make_host("postgres-hostdb", **DELIVERY_CONFIG)
    app, db = host.app, host.db
    teardowns: list[str] = []
    with app.app_context():
        db.session.execute(text("DROP TABLE IF EXISTS visits"))
        db.session.execute(text("CREATE TABLE visits (path VARCHAR(200))"))
        db.session.commit()

    @app.before_request
    def note_visit() -> None:  # pending in the host's session until after_request commits
        db.session.execute(text("INSERT INTO visits VALUES (:p)"), {"p": request.full_path})

    @app.after_request
    def commit_visit(response: Any) -> Any:
        db.session.commit()
        return response

    @app.teardown_request
    def count_teardown(_error: Any) -> None:
        teardowns.append(request.path)

    @app.errorhandler(400)
    @app.errorhandler(404)
    def host_error(error: Any) -> tuple[str, int]:
        return "HOST PAGE", error.code

    @app.get("/link")
    def make_link() -> str:
        return host.webhooks.portal_link("org-1", base_url="https://app.example").url

    client = app.test_client()
    link = client.get("/link").text
    assert link.startswith("https://app.example/v2/webhooks/portal/enter?t=")
    assert teardowns == ["/link"]  # making the link ran none of the host's hooks again
    assert client.get(link.removeprefix("https://app.example")).status_code == 200
    rid = register(host, receiver().url("/a"))["id"]
    paths = [
        "/v2/webhooks/portal/?",
        "/v2/webhooks/portal/events?",
        f"/v2/webhooks/portal/endpoints/{rid}?",
        f"/v2/webhooks/portal/endpoints/{rid}?status=lost",
        "/v2/webhooks/portal/no-such-page?",
        "/v2/webhooks/portal/sign-out?",  # a form's address, asked with GET
    ]
    for path in paths:
        answer = client.get(path)
        assert "HOST PAGE" not in answer.text  # the portal's own page, whatever the status
        assert "<html" in answer.text
    assert client.get(paths[3]).status_code == 400
    assert client.get(paths[4]).status_code == 404
    with app.app_context():
        seen = [row[0] for row in db.session.execute(text("SELECT path FROM visits"))]
    for path in paths:
        assert path in seen  # the host's pending work was committed, not thrown away
    with app.app_context():
        db.session.execute(text("DROP TABLE visits"))  # the host's table, not the next test's
        db.session.commit()


def test_a_form_token_that_is_not_ascii_is_refused_not_a_failure(host: Any) -> None:
    client = host.app.test_client()
    enter(client)
    for token in ("é", "ü" * 64, "0" * 20_000):
        refused = client.post(PORTAL + "/sign-out", data={"csrf_token": token})
        assert refused.status_code == (413 if len(token) > 1000 else 403)
    assert client.get(PORTAL + "/").status_code == 200  # still signed in


def test_forms_from_the_hosts_public_address_are_taken_behind_a_proxy(make_host: Any) -> None:
    host = make_host(
        "sqlite", **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_PORTAL_BASE_URL="https://app.example"
    )
    client = host.app.test_client()
    link = client.post(LINKS, headers=ADMIN).get_json()["url"]
    client.get(link.removeprefix("https://app.example"))  # the proxy asks for localhost
    form = {"topic": "profile_updated", "url": "http://127.0.0.1:9/a", "secret": ""}
    made = client.post(
        PORTAL + "/endpoints",
        data={**form, "csrf_token": csrf_of(client)},
        headers={"Origin": "https://app.example"},
    )
    assert made.status_code == 201
