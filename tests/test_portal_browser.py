"""The integrator portal in a real browser: the system's Chromium, headless, driven by
Playwright against the host app served on 127.0.0.1, with real receivers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.receiver import InvalidSignature, verify
from tests.conftest import (
    ADMIN,
    DELIVERY_CONFIG,
    OTHER_ADMIN,
    FrozenClock,
    Host,
    register,
    service_unavailable,
)
from tests.receivers import Receiver, Reply, wait_until

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # the browser fixture says so
    sync_playwright = None

PREFIX = "/v2/webhooks"
PORTAL = f"{PREFIX}/portal"
#: The portal's session cookie.
COOKIE = "kaizen_webhooks_portal"
#: What the portal's pages wait for at most, in milliseconds.
WAIT_MS = 5_000
PROFILE = {"id": "p-7", "email": "ann@example.com", "rev": "3-abc", "firstName": "Ann"}


# The browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the module: the system's, never a downloaded one."""
    if sync_playwright is None:
        service_unavailable("Playwright is not installed (pip install playwright)")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(executable, os.X_OK):
        service_unavailable(
            f"Chromium is not installed (no {executable}): apt-get install chromium"
        )
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except PlaywrightError as exc:
            service_unavailable(f"Chromium ({executable}) did not start: {exc}")
        expect.set_options(timeout=WAIT_MS)
        yield browser
        browser.close()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (its own cookies) for each test."""
    context = chromium.new_context()
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(WAIT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


# The host ---------------------------------------------------------------------------------------


@dataclass
class Portal:
    """A host app served on 127.0.0.1, its portal and ways to look behind its pages."""

    host: Host
    url: str

    @property
    def base(self) -> str:
        return self.url + PORTAL

    def link(self, owner: str = "org-1", **options: Any) -> str:
        """A link opening the portal for ``owner`` (org-1: the demo API user admin-token's
        owner key), made as a host makes it."""
        with self.host.app.app_context():
            made = self.host.webhooks.portal_link(owner, base_url=self.url, **options)
        return made.url

    def trigger(self, topic: str = "profile_updated", payload: Any = PROFILE) -> list[str]:
        with self.host.app.app_context():
            ids = self.host.webhooks.trigger(topic, payload)
        return [str(delivery_id) for delivery_id in ids]

    def api(self, path: str, headers: dict[str, str] = ADMIN) -> Any:
        response = self.host.app.test_client().get(PREFIX + path, headers=headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def delivery(self, delivery_id: str, headers: dict[str, str] = ADMIN) -> Any:
        return self.api(f"/deliveries/{delivery_id}", headers)

    def registrations(self, headers: dict[str, str] = ADMIN) -> list[dict[str, Any]]:
        return list(self.api("/registrations", headers)["items"])


@pytest.fixture
def portal(make_host: Callable[..., Host], serve: Callable[[Any], Any]) -> Portal:
    host = make_host("sqlite", **DELIVERY_CONFIG)
    return Portal(host, serve(host.app).url)


def sign_in(page: Page, portal: Portal, link: str | None = None) -> None:
    """Follow a link and land on the endpoints page."""
    response = page.goto(link or portal.link())
    assert response is not None and response.status == 200
    page.wait_for_url(portal.base + "/")
    expect(page.get_by_role("heading", name="Endpoints", exact=True)).to_be_visible()


def csrf_token(page: Page) -> str:
    """The CSRF token the forms of the page shown carry."""
    return str(page.locator("input[name=csrf_token]").first.get_attribute("value"))


def open_endpoint(page: Page, url: str) -> None:
    """From the endpoints page, open the endpoint of ``url``."""
    page.get_by_role("link", name=url, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(url)


def fact(page: Page, name: str) -> Any:
    """The value of the fact ``name`` in the page's list of facts."""
    term = f'//dl[@class="facts"]/dt[normalize-space()="{name}"]'
    return page.locator(f"xpath={term}/following-sibling::dd[1]")


def short(delivery_id: str) -> str:
    """A delivery's id as the portal's lists show it: its last, random group."""
    return "…" + delivery_id.rsplit("-", 1)[-1]


def failing_until(healthy: threading.Event) -> Callable[[Any, int], Reply]:
    """A receiver's answers: 500 until ``healthy`` is set, then 200."""

    def answer(request: Any, number: int) -> Reply:
        if healthy.is_set():
            return Reply(200, b'{"thanks": "got it"}')
        return Reply(500, b'{"error": "database down"}')

    return answer


# Opening the portal -----------------------------------------------------------------------------


def test_a_link_from_the_api_opens_the_owners_endpoints_only(
    portal: Portal, page: Page, context: BrowserContext, receiver: Callable[..., Receiver]
) -> None:
    server = receiver()
    mine = [server.url("/mine-profiles"), server.url("/mine-bookings")]
    register(portal.host, mine[0])
    register(portal.host, mine[1], topic="booking_updated")
    theirs = server.url("/theirs")
    register(portal.host, theirs, headers=OTHER_ADMIN)

    made = requests.post(portal.url + PREFIX + "/portal-links", headers=ADMIN, timeout=10)
    assert made.status_code == 201, made.text
    link = made.json()["url"]
    assert link.startswith(portal.base + "/enter?t=")

    sign_in(page, portal, link)
    table = page.get_by_role("table", name="Your endpoints")
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text(mine[0])
    expect(rows.nth(0)).to_contain_text("profile_updated")
    expect(rows.nth(0)).to_contain_text("active")
    expect(rows.nth(0)).to_contain_text("none yet")
    expect(rows.nth(1)).to_contain_text(mine[1])
    expect(rows.nth(1)).to_contain_text("booking_updated")
    assert theirs not in page.content()

    [cookie] = context.cookies()
    assert (cookie["name"], cookie["path"]) == (COOKIE, PORTAL + "/")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    open_endpoint(page, mine[1])
    expect(page.get_by_text("No deliveries.")).to_be_visible()
    page.get_by_role("link", name="Event catalog").click()
    expect(page.get_by_role("heading", name="Event catalog")).to_be_visible()
    expect(page.get_by_role("heading", name="profile_updated")).to_be_visible()


# Changing endpoints -----------------------------------------------------------------------------


def test_an_endpoint_added_with_the_form_gets_a_secret_shown_once_that_signs_its_webhooks(
    portal: Portal, page: Page, receiver: Callable[..., Receiver]
) -> None:
    server = receiver()
    url = server.url("/added")
    sign_in(page, portal)
    expect(page.get_by_text("You have no endpoints yet")).to_be_visible()

    page.get_by_label("Event").select_option("profile_updated")
    page.get_by_label("URL").fill(url)
    expect(page.get_by_label("Secret")).to_have_value("")
    with page.expect_response(lambda answer: answer.request.method == "POST") as posted:
        page.get_by_role("button", name="Add endpoint").click()
    assert posted.value.status == 201
    expect(page.get_by_role("heading", name="Endpoint added")).to_be_visible()
    expect(page.get_by_role("main")).to_contain_text(f"profile_updated webhooks now go to {url}")
    expect(page.get_by_text("it is shown this once")).to_be_visible()
    secret = page.get_by_label("The new secret").inner_text().strip()
    assert len(secret) >= 32

    [registration] = portal.registrations()
    assert (registration["url"], registration["topic"]) == (url, "profile_updated")
    page.get_by_role("link", name="Go to the endpoint").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(url)
    assert secret not in page.content()
    page.get_by_role("link", name="Endpoints", exact=True).first.click()
    expect(page.get_by_role("table", name="Your endpoints").locator("tbody tr")).to_have_count(1)
    assert secret not in page.content()

    [delivery_id] = portal.trigger()
    [request] = server.wait_for(1)
    assert verify(request.body, secret) == {**PROFILE, "webhook_request_id": delivery_id}
    with pytest.raises(InvalidSignature):
        verify(request.body, secret + "x")


def test_a_test_webhook_shows_the_receivers_answer_inline(
    portal: Portal, page: Page, receiver: Callable[..., Receiver]
) -> None:
    server = receiver(lambda request, number: Reply(202, b'{"received": "yes", "queue": 7}'))
    url = server.url("/tested")
    register(portal.host, url, secret="signature_secret_0123")
    sign_in(page, portal)
    open_endpoint(page, url)

    page.get_by_role("button", name="Send a test webhook").click()
    result = page.get_by_role("status", name="Test webhook")
    expect(result).to_contain_text("Your endpoint answered 202")
    expect(result.locator(".badge")).to_have_text("succeeded")
    answer = json.loads(result.get_by_label("The answer").inner_text())
    assert answer == {"received": "yes", "queue": 7}

    [request] = server.wait_for(1)
    with portal.host.app.app_context():
        sample = get_state().topics.get("profile_updated")
    assert sample is not None
    payload = verify(request.body, "signature_secret_0123")
    assert {key: payload[key] for key in sample.sample_payload} == sample.sample_payload

    result.get_by_role("link", name="The test delivery").click()
    expect(page.get_by_role("heading", name="Attempt 1: answered 202")).to_be_visible()
    expect(page.get_by_label("The answer of attempt 1")).to_contain_text('"queue": 7')


def test_a_failed_delivery_is_found_by_its_status_its_attempts_shown_and_redelivered(
    portal: Portal, page: Page, receiver: Callable[..., Receiver]
) -> None:
    healthy = threading.Event()
    healthy.set()
    server = receiver(failing_until(healthy))
    url = server.url("/flaky")
    register(portal.host, url)
    [delivered] = portal.trigger()
    wait_until(lambda: portal.delivery(delivered)["status"] == "succeeded", timeout=10)
    healthy.clear()
    [failed] = portal.trigger()
    wait_until(lambda: portal.delivery(failed)["status"] == "failed", timeout=10)

    sign_in(page, portal)
    open_endpoint(page, url)
    rows = page.get_by_role("table", name="Deliveries").locator("tbody tr")
    expect(rows).to_have_count(2)
    shown = rows.locator("td:first-child code")
    # Newest first, each told apart by the id shown (ids made in the same minute start alike).
    expect(shown).to_have_text([short(failed), short(delivered)])
    page.get_by_label("Show").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**status=failed")
    expect(page.get_by_role("table")).to_have_accessible_name("Failed deliveries, newest first")
    expect(rows).to_have_count(1)
    expect(shown).to_have_text([short(failed)])
    expect(rows.first.locator(".badge")).to_have_text("failed")
    expect(rows.first).to_contain_text("500")
    rows.first.get_by_role("link").click()

    expect(page.get_by_role("heading", level=1)).to_contain_text(failed)
    for number in (1, 2, 3):
        heading = page.get_by_role("heading", name=f"Attempt {number}: answered 500")
        expect(heading).to_be_visible()
        expect(page.get_by_label(f"The answer of attempt {number}")).to_contain_text(
            "database down"
        )
    expect(fact(page, "Status")).to_have_text("failed")
    expect(fact(page, "Attempts")).to_have_text("3")
    payload = page.get_by_role("region", name="Payload").locator("pre")
    assert json.loads(payload.inner_text()) == {**PROFILE, "webhook_request_id": failed}

    healthy.set()
    page.get_by_role("button", name="Redeliver").click()
    expect(page.get_by_role("status")).to_contain_text("The delivery was queued again")

    def succeeded() -> bool:
        page.reload()
        return page.get_by_role("heading", name="Attempt 4: answered 200").count() == 1

    wait_until(succeeded, timeout=10, interval=0.2)
    expect(fact(page, "Status")).to_have_text("succeeded")
    expect(fact(page, "Attempts")).to_have_text("4")
    expect(page.get_by_label("The answer of attempt 4")).to_contain_text("got it")
    assert len(server.received) == 5


def test_rotating_the_secret_shows_the_new_one_once_and_both_verify_during_the_overlap(
    portal: Portal, page: Page, receiver: Callable[..., Receiver]
) -> None:
    server = receiver()
    url = server.url("/rotated")
    old = "signature_secret_0123"
    register(portal.host, url, secret=old)
    sign_in(page, portal)
    open_endpoint(page, url)

    page.get_by_role("button", name="Rotate the secret").click()
    expect(page.get_by_role("heading", name="Secret rotated")).to_be_visible()
    new = page.get_by_label("The new secret").inner_text().strip()
    assert len(new) >= 32 and new != old
    explained = page.get_by_role("main")
    expect(explained).to_contain_text("it is shown this once")
    expect(explained).to_contain_text("(24 hours)")
    expect(explained).to_contain_text("stay signed with the previous secret")
    expect(explained).to_contain_text("Webhook-Signature-Next")

    page.get_by_role("link", name="Back to the endpoint").click()
    expect(fact(page, "Secret version")).to_contain_text("2")
    expect(fact(page, "Secret version")).to_contain_text("(the previous one signs too until")
    assert new not in page.content()

    [delivery_id] = portal.trigger()
    [request] = server.wait_for(1)
    expected = {**PROFILE, "webhook_request_id": delivery_id}
    following = request.headers["Webhook-Signature-Next"]
    assert verify(request.body, new, next_signature=following) == expected
    assert verify(request.body, old) == expected
    with pytest.raises(InvalidSignature):
        verify(request.body, new)


# Keyboard and phone -----------------------------------------------------------------------------


def focused(page: Page) -> str:
    """The id (or else the text) of the element that has the focus."""
    return str(page.evaluate("document.activeElement.id || document.activeElement.textContent"))


def test_the_form_is_labelled_and_is_filled_and_sent_with_the_keyboard_alone(
    portal: Portal, page: Page, receiver: Callable[..., Receiver]
) -> None:
    url = receiver().url("/typed")
    sign_in(page, portal)
    assert page.get_by_label("Event").evaluate("node => node.id") == "topic"
    assert page.get_by_label("URL").evaluate("node => node.id") == "url"
    assert page.get_by_label("Secret").evaluate("node => node.id") == "secret"

    page.keyboard.press("Tab")
    assert focused(page).strip() == "Skip to the content"
    skip = page.get_by_role("link", name="Skip to the content").bounding_box()
    assert skip is not None and skip["x"] >= 0, "the skip link shows when it has the focus"
    for _ in range(10):
        if focused(page) == "topic":
            break
        page.keyboard.press("Tab")
    assert focused(page) == "topic"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focus is visible"

    page.keyboard.type("booking_u")
    expect(page.get_by_label("Event")).to_have_value("booking_updated")
    page.keyboard.press("Tab")
    assert focused(page) == "url"
    page.keyboard.type(url)
    page.keyboard.press("Tab")
    assert focused(page) == "secret"
    page.keyboard.type("typed_secret_0123456789")
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", name="Endpoint added")).to_be_visible()
    expect(page.get_by_role("main")).to_contain_text(f"booking_updated webhooks now go to {url}")
    expect(page.get_by_text("signed with the secret you gave")).to_be_visible()
    [registration] = portal.registrations()
    assert (registration["url"], registration["topic"]) == (url, "booking_updated")


PHONE = {"width": 375, "height": 740}


def overflows(page: Page) -> bool:
    """Whether the page shown is wider than the window, once its style sheet applies."""
    page.wait_for_load_state("load")
    return bool(
        page.evaluate(
            "document.documentElement.scrollWidth > document.documentElement.clientWidth + 1"
        )
    )


def test_the_pages_fit_a_phones_width(
    portal: Portal, chromium: Browser, receiver: Callable[..., Receiver]
) -> None:
    server = receiver(lambda request, number: Reply(500, b'{"error": "' + b"x" * 300 + b'"}'))
    long = server.url("/hooks/" + "a-long-path-segment-without-any-break" * 4 + "?key=" + "k" * 60)
    register(portal.host, long)
    register(portal.host, server.url("/short"), topic="booking_updated")
    [delivery_id] = portal.trigger()
    wait_until(lambda: portal.delivery(delivery_id)["attempts"] >= 1, timeout=10)
    context = chromium.new_context(viewport=PHONE)
    context.set_default_timeout(WAIT_MS)
    try:
        page = context.new_page()
        sign_in(page, portal)
        assert page.evaluate("document.documentElement.clientWidth") == PHONE["width"]
        rows = page.get_by_role("table", name="Your endpoints").locator("tbody tr")
        expect(rows).to_have_count(2)
        assert not overflows(page), "the endpoints page is wider than the phone"
        shown = {"endpoints": page.url}
        page.get_by_label("URL").fill(long + "-added")
        page.get_by_role("button", name="Add endpoint").click()
        expect(page.get_by_label("The new secret")).to_be_visible()
        assert not overflows(page), "the page of the new secret is wider than the phone"
        page.get_by_role("link", name="Endpoints", exact=True).click()
        open_endpoint(page, long)
        shown["endpoint"] = page.url
        page.get_by_role("table", name="Deliveries").get_by_role("link").first.click()
        expect(page.get_by_role("heading", name="Attempt 1: answered 500")).to_be_visible()
        shown["delivery"] = page.url
        shown["catalog"] = portal.base + "/events"
        for name, address in shown.items():
            page.goto(address)
            assert not overflows(page), f"the {name} page is wider than the phone"
    finally:
        context.close()


# Refusals ---------------------------------------------------------------------------------------


def refused(page: Page, reason: str, *, signed_in: bool = False) -> None:
    """The page shown is the refusal page, saying ``reason``."""
    expect(page.get_by_role("heading", level=1)).to_have_text("Access refused")
    expect(page.get_by_role("alert")).to_contain_text(reason)
    expect(page.get_by_role("button", name="Sign out")).to_have_count(1 if signed_in else 0)


def test_an_expired_link_is_refused(
    portal: Portal, page: Page, context: BrowserContext, receiver: Callable[..., Receiver]
) -> None:
    url = receiver().url("/expired")
    register(portal.host, url)
    link = portal.link(expires_in=1)
    get_state(portal.host.app).clock = FrozenClock(time.time() + 120)

    response = page.goto(link)
    assert response is not None and response.status == 403
    refused(page, "This portal link expired at")
    expect(page.locator("meta[http-equiv=refresh]")).to_have_count(0)
    assert context.cookies() == []
    assert url not in page.content()


def test_an_altered_or_cut_link_is_refused(
    portal: Portal, page: Page, context: BrowserContext, receiver: Callable[..., Receiver]
) -> None:
    url = receiver().url("/altered")
    register(portal.host, url)
    link = portal.link()
    start = link.index("t=") + 2
    changed = "B" if link[start] == "A" else "A"
    altered = [link[:start] + changed + link[start + 1 :], link[:-5], link[:start]]
    for address in altered:
        response = page.goto(address)
        assert response is not None and response.status == 403, address
        refused(page, "This portal link is not valid")
        assert url not in page.content()
    assert context.cookies() == []
    sign_in(page, portal, link)  # the link itself opens the portal
    expect(page.get_by_role("link", name=url)).to_be_visible()


def test_signing_out_ends_the_session_and_the_link(
    portal: Portal, page: Page, context: BrowserContext, receiver: Callable[..., Receiver]
) -> None:
    url = receiver().url("/signed-out")
    register(portal.host, url)
    link = portal.link()
    sign_in(page, portal, link)
    [cookie] = context.cookies()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Signed out")).to_be_visible()
    assert context.cookies() == []

    response = page.goto(portal.base + "/")
    assert response is not None and response.status == 403
    refused(page, "You are not signed in")
    assert url not in page.content()

    response = page.goto(link)
    assert response is not None and response.status == 403
    refused(page, "This portal link was used to sign out")
    assert context.cookies() == []

    context.add_cookies([cookie])  # the cookie kept from before opens nothing either
    response = page.goto(portal.base + "/")
    assert response is not None and response.status == 403
    refused(page, "your session has ended")
    assert url not in page.content()


def test_a_form_without_its_csrf_token_or_from_another_site_is_refused(
    portal: Portal, page: Page, context: BrowserContext, receiver: Callable[..., Receiver]
) -> None:
    url = receiver().url("/forged")
    sign_in(page, portal)
    token = csrf_token(page)

    page.evaluate("document.querySelector('form.stack input[name=csrf_token]').remove()")
    page.get_by_label("URL").fill(url)
    with page.expect_response(lambda answer: answer.request.method == "POST") as posted:
        page.get_by_role("button", name="Add endpoint").click()
    assert posted.value.status == 403
    refused(page, "The form was sent without its security token", signed_in=True)
    assert portal.registrations() == []

    create = portal.base + "/endpoints"
    form = {"topic": "profile_updated", "url": url}
    forged = [
        ({**form}, {}),
        ({**form, "csrf_token": token[:-1] + ("0" if token[-1] != "0" else "1")}, {}),
        ({**form, "csrf_token": token}, {"Origin": "http://evil.example"}),
        ({**form, "csrf_token": token}, {"Origin": "null", "Sec-Fetch-Site": "cross-site"}),
        ({**form, "csrf_token": token}, {"Sec-Fetch-Site": "same-site"}),
    ]
    for fields, headers in forged:
        answer = context.request.post(create, form=fields, headers=headers)
        assert answer.status == 403, (fields, headers)
        assert "Access refused" in answer.text()
    assert portal.registrations() == []

    answer = context.request.post(create, form={**form, "csrf_token": token})
    assert answer.status == 201  # the same form with its token is taken
    assert [item["url"] for item in portal.registrations()] == [url]


def test_another_owners_delivery_and_endpoint_are_not_found(
    portal: Portal, page: Page, context: BrowserContext, receiver: Callable[..., Receiver]
) -> None:
    server = receiver()
    theirs = server.url("/theirs")
    registration = register(portal.host, theirs, headers=OTHER_ADMIN)
    mine = server.url("/mine")
    register(portal.host, mine)
    secret_profile = {**PROFILE, "email": "only-for-org-2@example.com"}
    ids = portal.trigger(payload=secret_profile)
    server.wait_for(2)
    api = portal.host.app.test_client()
    [their_delivery] = [
        delivery_id
        for delivery_id in ids
        if api.get(f"{PREFIX}/deliveries/{delivery_id}", headers=OTHER_ADMIN).status_code == 200
    ]

    sign_in(page, portal)
    token = csrf_token(page)
    for address in (
        f"{portal.base}/deliveries/{their_delivery}",
        f"{portal.base}/endpoints/{registration['id']}",
        f"{portal.base}/endpoints/{registration['id']}?status=succeeded",
    ):
        response = page.goto(address)
        assert response is not None and response.status == 404, address
        expect(page.get_by_role("alert")).to_have_text(
            "There is no such page, or it is not yours to see."
        )
        content = page.content()
        assert theirs not in content and "only-for-org-2" not in content
        assert their_delivery not in content and registration["id"] not in content

    for action, fields in (
        (f"/deliveries/{their_delivery}/redeliver", {}),
        (f"/endpoints/{registration['id']}/state", {"state": "disabled"}),
        (f"/endpoints/{registration['id']}/rotate", {}),
        (f"/endpoints/{registration['id']}/test", {}),
        (f"/endpoints/{registration['id']}/delete", {}),
    ):
        answer = context.request.post(portal.base + action, form={**fields, "csrf_token": token})
        assert answer.status == 404, action
        assert "only-for-org-2" not in answer.text() and theirs not in answer.text()
    [kept] = portal.registrations(OTHER_ADMIN)
    assert (kept["state"], kept["rev"]) == ("active", registration["rev"])
    assert len(server.received) == 2


# Without a browser ------------------------------------------------------------------------------


def test_forms_carry_the_token_and_are_taken_with_the_headers_browsers_send(
    make_host: Callable[..., Host], receiver: Callable[..., Receiver]
) -> None:
    """What the tests above see in Chromium, checked with Flask's test client: every form of a
    page carries the session's token; under the portal's ``Referrer-Policy: no-referrer``
    browsers send its forms with ``Origin: null``, and ``Sec-Fetch-Site`` tells where they came
    from; deliveries made together are told apart by the id the list shows."""
    host = make_host("sqlite", **DELIVERY_CONFIG)
    registration = register(host, receiver().url())
    with host.app.app_context():
        ids = [host.webhooks.trigger("profile_updated", PROFILE)[0] for _ in range(2)]
        link = host.webhooks.portal_link("org-1", base_url="http://localhost").url
    client = host.app.test_client()
    assert client.get(link).status_code == 200

    tokens: set[str] = set()
    endpoint = f"{PORTAL}/endpoints/{registration['id']}"
    for address in (f"{PORTAL}/", endpoint, f"{PORTAL}/deliveries/{ids[0]}"):
        page = client.get(address)
        assert page.status_code == 200, address
        tokens.update(re.findall(r'name="csrf_token" value="([^"]*)"', page.text))
    [token] = tokens
    assert token

    listed = re.findall(r"<td><a href=[^>]*><code[^>]*>([^<]*)</code>", client.get(endpoint).text)
    assert sorted(listed) == sorted(short(delivery_id) for delivery_id in ids)

    form = {"csrf_token": token, "state": "disabled", "rev": registration["rev"]}
    for headers in (
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "null", "Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
    ):
        answer = client.post(f"{endpoint}/state", data=form, headers=headers)
        assert answer.status_code == 403, headers
        assert "sent from another site" in answer.text
    chromium_sends = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    answer = client.post(f"{endpoint}/state", data=form, headers=chromium_sends)
    assert answer.status_code == 303, answer.text
    changed = client.get(f"{PREFIX}/registrations/{registration['id']}", headers=ADMIN)
    assert changed.get_json()["state"] == "disabled"
