"""Screenshots of the integrator portal for the manual and the README (``make screenshots``).

Runs the demo host app on a fresh database, with a small receiver beside it, both on 127.0.0.1;
registers endpoints for the demo integrator through the API (one of them answers 500, so that a
delivery fails), fires webhooks through the demo's own API, opens a portal link in headless
Chromium (the system's, driven by Playwright) and saves the pages as PNGs in
``docs/_static/portal/``. Everything it starts is stopped when it ends.

    .venv/bin/python docs/screenshots.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "_static" / "portal"
#: The secret every demo endpoint is registered with.
SECRET = "signature_secret_1234"
#: The demo integrator's API token.
TOKEN = "admin-token"
#: (topic, path on the receiver); the last path answers 500.
ENDPOINTS = (
    ("user_logged_in", "/hooks/logins"),
    ("profile_updated", "/hooks/profiles"),
    ("booking_updated", "/hooks/bookings"),
    ("booking_state_changed", "/hooks/booking-states"),
)
FAILING_PATH = "/hooks/booking-states"
#: The demo's settings for the pictures: retries seconds apart, so that a delivery fails for
#: good (after three attempts) while the script waits.
CONFIG = {"KAIZEN_WEBHOOKS_RETRY_SCHEDULE": [1, 2], "KAIZEN_WEBHOOKS_POLL_INTERVAL": 0.25}
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}


def chromium_path() -> str:
    """The system's Chromium; the script never downloads a browser."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        sys.exit(
            "make screenshots needs Chromium, which is not installed: install the system's "
            "package (on Debian: apt-get install chromium) and run it again."
        )
    return path


# Servers ----------------------------------------------------------------------------------------


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve the WSGI ``app`` on a free port of 127.0.0.1 in a thread; yield its address."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="screenshots-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def receiver_app() -> Any:
    """An integrator's receiver: verifies every webhook and answers 200 with a JSON body, but
    for ``FAILING_PATH``, whose service is down and answers 500."""
    from flask import Flask

    from flask_kaizen_webhooks.receiver import webhook_view

    app = Flask("screenshots_receiver")

    @app.post(FAILING_PATH)
    def failing() -> tuple[dict[str, str], int]:
        return {"error": "internal_error", "message": "the scheduling database is down"}, 500

    @app.post("/<path:path>")
    @webhook_view(secret=SECRET)
    def receive(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"received": True, "webhook_request_id": payload["webhook_request_id"]}

    return app


# Webhooks ---------------------------------------------------------------------------------------


def fire_webhooks(site: str, receiver: str) -> dict[str, str]:
    """Register the endpoints and send webhooks to them as the demo integrator; answer the
    registrations' ids by topic."""
    import requests

    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {TOKEN}"

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = api.request(method, f"{site}{path}", timeout=30, **kwargs)
        if not response.ok:
            raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text}")
        return response.json()

    ids = {}
    for topic, path in ENDPOINTS:
        document = {"topic": topic, "url": f"{receiver}{path}", "secret": SECRET}
        ids[topic] = call("POST", "/v2/webhooks/registrations", json=document)["id"]
    login = requests.post(
        f"{site}/sso/login",
        headers={
            "X-SSO-Email": "ann@example.com",
            "X-SSO-First-Name": "Ann",
            "X-SSO-Last-Name": "Lee",
        },
        timeout=30,
    )
    login.raise_for_status()
    user = login.json()["user"]["id"]
    call("PUT", f"/v2/profiles/{user}", json={"lastName": "Smith"})
    fields = [{"name": "department", "value": "Cardiology"}]
    call("PUT", f"/v2/profiles/{user}", json={"userFields": fields})
    booking = {"title": "OSCE station 4", "userId": user, "start": "2025-06-02T09:00:00Z"}
    call("PUT", "/v2/bookings/b-1", json=booking)
    call("PUT", "/v2/bookings/b-1", json={"end": "2025-06-02T09:20:00Z"})
    call("POST", "/v2/bookings/b-1/transitions", json={"transition": "approve"})
    call("POST", "/v2/webhooks/test", json={"topic": "profile_updated"})

    def settled() -> bool:
        statuses = {
            topic: {
                item["status"]
                for item in call("GET", f"/v2/webhooks/registrations/{ids[topic]}/deliveries")[
                    "items"
                ]
            }
            for topic, _ in ENDPOINTS
        }
        failing = statuses.pop("booking_state_changed")
        return failing == {"failed"} and all(found == {"succeeded"} for found in statuses.values())

    wait_until(settled, "every delivery succeeded but the failing endpoint's, which failed")
    return ids


def portal_link(site: str) -> str:
    import requests

    response = requests.post(
        f"{site}/v2/webhooks/portal-links",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    response.raise_for_status()
    url: str = response.json()["url"]
    return url


def wait_until(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s in vain until {what}")
        time.sleep(0.25)


# Pictures ---------------------------------------------------------------------------------------


def take_screenshots(link: str, ids: dict[str, str], out: Path) -> list[Path]:
    """Open the portal ``link`` and save its pages into ``out``."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport=DESKTOP).new_page()

            def shot(name: str) -> None:
                path = out / name
                page.screenshot(path=path, full_page=True, animations="disabled")
                saved.append(path)

            page.goto(link)
            page.wait_for_selector("table")  # the link's page goes on to the endpoints
            endpoints = page.url
            shot("endpoints.png")

            page.click(f"a[href$='/endpoints/{ids['profile_updated']}']")
            page.click("button:has-text('Send a test webhook')")
            page.wait_for_selector("#test-result")
            shot("endpoint.png")

            page.goto(f"{endpoints}endpoints/{ids['booking_state_changed']}?status=failed")
            page.click("table a")
            page.wait_for_selector(".attempts")
            shot("delivery.png")

            page.click("nav a:has-text('Event catalog')")
            page.click("summary >> nth=1")  # the sample payload of user_registered
            shot("events.png")

            page.set_viewport_size(PHONE)
            page.goto(endpoints)
            shot("phone.png")
        finally:
            browser.close()
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    chromium_path()
    if importlib.util.find_spec("playwright") is None:
        sys.exit("make screenshots needs Playwright: .venv/bin/python -m pip install playwright")
    started = time.monotonic()
    sys.path.insert(0, str(ROOT))  # the demo app ships beside the package, not in it
    # Quiet: the demo's warnings (plain http, the derived key) and the delivery meant to fail.
    for name in ("example_app", "flask_kaizen_webhooks"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from example_app import create_app
    from example_app.extensions import webhooks

    with ExitStack() as stack:
        instance = stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-shots-"))
        app = create_app(CONFIG, instance_path=instance)
        webhooks.start(app)
        stack.callback(webhooks.shutdown, app, 10)
        receiver = stack.enter_context(serving(receiver_app()))
        site = stack.enter_context(serving(app))
        ids = fire_webhooks(site, receiver)
        saved = take_screenshots(portal_link(site), ids, args.out)
    for path in saved:
        print(
            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
            f"{path.stat().st_size // 1024} KB"
        )
    print(f"{len(saved)} screenshots in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
