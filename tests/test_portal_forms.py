"""The portal's forms as a browser sends them: every form carries the session's CSRF token, and
the pages let the browser send their Origin, which the form check compares with the site's."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask.testing import FlaskClient

from tests.conftest import ADMIN, DELIVERY_CONFIG, Host, register

SITE = "http://localhost"


def open_portal(host: Host) -> FlaskClient:
    """A browser that followed a portal link for the demo integrator."""
    browser = host.app.test_client()
    link = browser.post("/v2/webhooks/portal-links", headers=ADMIN).get_json()["url"]
    entered = browser.get(link)
    assert entered.status_code == 200
    # The link's page (its address carries the link's token) sends no address along.
    assert entered.headers["Referrer-Policy"] == "no-referrer"
    return browser


def post_forms(page: str) -> dict[str, dict[str, str]]:
    """The page's POST forms, by action: their fields, as a browser would send them."""
    forms = {}
    for action, body in re.findall(
        r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', page, re.S
    ):
        fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body)
        forms[action] = dict(fields)
    return forms


def test_every_form_of_an_endpoints_page_carries_the_csrf_token(
    make_host: Callable[..., Host],
) -> None:
    host = make_host(KAIZEN_WEBHOOKS_EXECUTOR="none", **DELIVERY_CONFIG)
    created = register(host, "http://127.0.0.1:8080/hooks")
    browser = open_portal(host)
    here = f"/v2/webhooks/portal/endpoints/{created['id']}"
    page = browser.get(here)
    assert page.status_code == 200
    # Browsers send a form's Origin only if the page's referrer policy lets them ("null" under
    # no-referrer, which tells nothing of where the form came from).
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert 'name="referrer"' not in page.text
    forms = post_forms(page.text)
    assert {f"{here}/test", f"{here}/state", f"{here}/rotate", f"{here}/delete"} <= set(forms)
    for action, fields in forms.items():
        assert re.fullmatch(r"[0-9a-f]{64}", fields.get("csrf_token", "")), action

    disabled = browser.post(f"{here}/state", data=forms[f"{here}/state"], headers={"Origin": SITE})
    assert disabled.status_code == 303
    for elsewhere in (
        {"Origin": "https://evil.example"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    ):
        refused = browser.post(f"{here}/state", data=forms[f"{here}/state"], headers=elsewhere)
        assert refused.status_code == 403, elsewhere


def test_a_deliverys_redeliver_form_carries_the_csrf_token(make_host: Callable[..., Host]) -> None:
    host = make_host(KAIZEN_WEBHOOKS_EXECUTOR="none", **DELIVERY_CONFIG)
    created = register(host, "http://127.0.0.1:8080/hooks")
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"id": "p-1"})
    deliveries = host.app.test_client().get(
        f"/v2/webhooks/registrations/{created['id']}/deliveries", headers=ADMIN
    )
    [delivery] = deliveries.get_json()["items"]
    browser = open_portal(host)
    page = browser.get(f"/v2/webhooks/portal/deliveries/{delivery['id']}")
    assert page.status_code == 200
    action = f"/v2/webhooks/portal/deliveries/{delivery['id']}/redeliver"
    fields = post_forms(page.text)[action]
    assert re.fullmatch(r"[0-9a-f]{64}", fields["csrf_token"])
    redelivered = browser.post(action, data=fields, headers={"Origin": SITE})
    assert redelivered.status_code == 303
