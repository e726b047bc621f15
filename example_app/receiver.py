"""An integrator's webhook receiver, as the integrator would write it with Flask.

    python -m example_app.receiver --secret signature_secret_1234 --port 6785

verifies every webhook with the package's helper and prints its topic and payload. With
``--callback-url`` (the host's base URL) and ``--token``, it also plays the synchronous
``user_registered`` flow: before answering, it fills in the new user's profile "from its own
system" through the host's API, so the user's login already shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from flask import Flask, request

from flask_kaizen_webhooks.receiver import webhook_view


def create_receiver(
    secret: str, callback_url: str | None = None, token: str | None = None
) -> Flask:
    """The receiver app: every path accepts webhooks signed with ``secret``."""
    app = Flask("example_receiver")

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    @webhook_view(secret=secret)
    def receive(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        topic = request.headers.get("Webhook-Topic", path or "?")
        print(f"Received {topic}:", flush=True)
        print(json.dumps(payload, indent=2), flush=True)
        answer: dict[str, Any] = {"ok": True}
        if topic == "user_registered" and callback_url and token:
            answer["profile"] = fill_in_profile(callback_url, token, payload)
        return answer

    return app


def fill_in_profile(callback_url: str, token: str, payload: dict[str, Any]) -> Any:
    """Update the new user's profile through the host's API, as an HR system would."""
    user_id = payload["user_id"]
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{callback_url.rstrip('/')}/v2/profiles/{user_id}"
    update = {"userFields": [{"name": "department", "value": "Cardiology"}]}
    request = urllib.request.Request(
        url,
        data=json.dumps(update).encode(),
        headers={**headers, "Content-Type": "application/json"},
        method="PUT",
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            print(f"Filled in profile {user_id}: HTTP {response.status}", flush=True)
            return json.load(response)
    except urllib.error.HTTPError as error:
        print(f"Filled in profile {user_id}: HTTP {error.code}", flush=True)
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Receive and print signed webhooks.")
    parser.add_argument("--secret", required=True, help="the secret given at registration")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6785)
    parser.add_argument("--callback-url", help="the host's base URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--token", help="an API token of the host, for --callback-url")
    args = parser.parse_args(argv)
    if args.callback_url and not args.token:
        parser.error("--callback-url needs --token")
    app = create_receiver(args.secret, args.callback_url, args.token)
    print(f"Receiving webhooks on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    app.run(host=args.host, port=args.port)


if __name__ == "__main__":
    main()
