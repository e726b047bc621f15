"""The OpenAPI document tells the truth: real responses of every endpoint conform to it."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from flask_kaizen_webhooks import get_state
from tests.conftest import ADMIN, DELIVERY_CONFIG, OTHER_ADMIN, USER, FrozenClock, register
from tests.receivers import Reply, wait_until

PREFIX = "/v2/webhooks"


class Contract:
    """Checks responses against the served document and remembers what was covered."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = {**document, "$id": "urn:kaizen-webhooks-openapi"}
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:kaizen-webhooks-openapi", resource)
        self.covered: set[tuple[str, str, str]] = set()

    def check(self, response: Any, path: str, method: str) -> None:
        status = str(response.status_code)
        operation = self.document["paths"][path][method]
        assert status in operation["responses"], f"{method} {path} answered undocumented {status}"
        documented = operation["responses"][status]
        if "$ref" in documented:
            documented = self.document["components"]["responses"][
                documented["$ref"].rsplit("/", 1)[1]
            ]
        assert response.mimetype == "application/json"
        schema = documented["content"]["application/json"]["schema"]
        validator = Draft202012Validator(
            {
                "$ref": "urn:kaizen-webhooks-openapi#"
                + _pointer(
                    [
                        "paths",
                        path,
                        method,
                        "responses",
                        status,
                        "content",
                        "application/json",
                        "schema",
                    ]
                )
                if "$ref" not in operation["responses"][status]
                else "urn:kaizen-webhooks-openapi#/components/schemas/Error"
            },
            registry=self.registry,
        )
        errors = list(validator.iter_errors(response.get_json()))
        assert not errors, f"{method} {path} {status}: {errors[0].message}"
        assert schema is not None
        self.covered.add((path, method, status))


def _pointer(parts: list[str]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@pytest.fixture
def host(make_host: Any, backend: str) -> Any:
    return make_host(backend, **DELIVERY_CONFIG)


def test_the_document_is_valid_openapi_3_1(host: Any) -> None:
    from openapi_spec_validator import validate

    response = host.app.test_client().get(f"{PREFIX}/openapi.json")  # public: no credentials
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": PREFIX}]


def test_the_document_lists_exactly_the_routes_of_the_blueprint(make_host: Any) -> None:
    """Each route of the API, with each method it handles (the others answer 405), is a path of
    the document with exactly those operations; and the document has no other path."""
    host = make_host("sqlite")
    client = host.app.test_client()
    routes: dict[str, set[str]] = {}
    for rule in host.app.url_map.iter_rules():
        if rule.endpoint.partition(".")[0] != "kaizen_webhooks" or "<path:" in rule.rule:
            continue  # not the API's, or its catch-all of unknown paths
        template = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule.removeprefix(PREFIX))
        concrete = re.sub(r"<[^>]+>", "nope", rule.rule)
        routes[template] = {
            method.lower()
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
            if client.open(concrete, method=method, headers=ADMIN).status_code != 405
        }
    document = client.get(f"{PREFIX}/openapi.json").get_json()
    documented = {
        path: {method for method in item if method != "parameters"}
        for path, item in document["paths"].items()
    }
    assert routes == documented


def test_every_endpoint_answers_as_documented(host: Any, receiver: Any, make_host: Any) -> None:
    client = host.app.test_client()
    contract = Contract(client.get(f"{PREFIX}/openapi.json").get_json())
    server = receiver(lambda request, n: Reply(status=500) if n == 1 else Reply())
    R, RID = "/registrations", "/registrations/{registration_id}"
    D, DID = "/registrations/{registration_id}/deliveries", "/deliveries/{delivery_id}"

    def call(method: str, path: str, template: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", ADMIN)
        response = client.open(PREFIX + path, method=method.upper(), **kwargs)
        contract.check(response, template, method)
        return response

    created = call(
        "post",
        R,
        R,
        json={"topic": "profile_updated", "url": server.url(), "secret": "signature_secret_0123"},
    ).get_json()
    rid, rev = created["id"], created["rev"]
    call(
        "post",
        R,
        R,
        json={"topic": "profile_updated", "url": server.url(), "secret": "signature_secret_0123"},
    )  # 409 duplicate
    call("post", R, R, data="{", content_type="application/json")  # 400
    call("post", R, R, data="{}", content_type="text/plain")  # 415
    call("post", R, R, json={"topic": "nope"})  # 422
    call("post", R, R, json={"x": "y" * 70000})  # 413
    call("get", R, R, headers={})  # 401
    call("get", R, R, headers=USER)  # 403
    call("get", f"{R}?limit=1", R)
    call("get", f"{R}?cursor=bad", R)  # 400
    call("get", f"{R}?limit=0", R)  # 422
    call("get", f"{R}/{rid}", RID)
    call("get", f"{R}/{rid}", RID, headers=OTHER_ADMIN)  # 404
    body = {"topic": "profile_updated", "url": server.url(), "rev": rev}
    rev = call("put", f"{R}/{rid}", RID, json=body).get_json()["rev"]
    call("put", f"{R}/{rid}", RID, json=body)  # 409 stale
    call("put", f"{R}/{rid}", RID, json={**body, "rev": rev, "state": "paused"})  # 422
    call("put", f"{R}/{rid}", RID, data="[", content_type="application/json")  # 400
    call("put", f"{R}/{rid}", RID, data="{}", content_type="text/plain")  # 415
    call("put", f"{R}/{rid}", RID, json={"x": "y" * 70000})  # 413
    call("put", f"{R}/nope", RID, json=body)  # 404
    RS = "/registrations/{registration_id}/rotate-secret"
    rotated = call("post", f"{R}/{rid}/rotate-secret", RS, json={"rev": rev})
    rev = rotated.get_json()["rev"]
    call("post", f"{R}/{rid}/rotate-secret", RS, json={"rev": "1-00"})  # 409
    call("post", f"{R}/{rid}/rotate-secret", RS, json={"rev": rev, "overlap_seconds": -1})
    call("post", f"{R}/{rid}/rotate-secret", RS, data="[", content_type="application/json")
    call("post", f"{R}/{rid}/rotate-secret", RS, data="{}", content_type="text/plain")
    call("post", f"{R}/{rid}/rotate-secret", RS, json={"x": "y" * 70000})  # 413
    call("post", f"{R}/nope/rotate-secret", RS, json={"rev": rev})  # 404
    call("get", "/topics", "/topics")
    call("post", "/test", "/test", json={"topic": "profile_updated"})
    call("post", "/test", "/test", json={"topic": "booking_updated"})  # 404
    call("post", "/test", "/test", json={"topic": "nope"})  # 422
    call("post", "/test", "/test", data="[", content_type="application/json")  # 400
    call("post", "/test", "/test", data="{}", content_type="text/plain")  # 415
    call("post", "/test", "/test", json={"x": "y" * 70000})  # 413
    with host.app.app_context():
        [delivery_id] = host.webhooks.trigger("profile_updated", {"n": 1})
    wait_until(
        lambda: (
            client.get(f"{PREFIX}/deliveries/{delivery_id}", headers=ADMIN).get_json()["status"]
            == "succeeded"
        )
    )
    call("get", f"{R}/{rid}/deliveries?limit=1", D)
    call("get", f"{R}/{rid}/deliveries?cursor=bad", D)  # 400
    call("get", f"{R}/{rid}/deliveries?limit=x", D)  # 422
    call("get", f"{R}/nope/deliveries", D)  # 404
    call("get", f"/deliveries/{delivery_id}", DID)
    call("get", "/deliveries/nope", DID)  # 404
    FEED = "/registrations/{registration_id}/feed"
    call("get", f"{R}/{rid}/feed?limit=1", FEED)
    call("get", f"{R}/{rid}/feed?after=bad", FEED)  # 400
    call("get", f"{R}/{rid}/feed?limit=0", FEED)  # 422
    call("get", f"{R}/nope/feed", FEED)  # 404
    RECOVER = "/registrations/{registration_id}/recover"
    hour_ago = {"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    call("post", f"{R}/{rid}/recover", RECOVER, json=hour_ago)  # 202
    call("post", f"{R}/{rid}/recover", RECOVER, json={"since": "then"})  # 422
    call("post", f"{R}/{rid}/recover", RECOVER, data="[", content_type="application/json")
    call("post", f"{R}/{rid}/recover", RECOVER, data="{}", content_type="text/plain")  # 415
    call("post", f"{R}/{rid}/recover", RECOVER, json={"x": "y" * 70000})  # 413
    call("post", f"{R}/nope/recover", RECOVER, json=hour_ago)  # 404
    paused = register(host, server.url("/paused"))
    paused_body = {"topic": "profile_updated", "url": server.url("/paused"), "state": "disabled"}
    client.put(
        f"{PREFIX}{R}/{paused['id']}", json={**paused_body, "rev": paused["rev"]}, headers=ADMIN
    )
    call("post", f"{R}/{paused['id']}/recover", RECOVER, json=hour_ago)  # 409
    REDELIVER = "/deliveries/{delivery_id}/redeliver"
    gate = threading.Event()
    server.responder = lambda request, n: Reply(wait=gate)
    seen = len(server.received)
    call("post", f"/deliveries/{delivery_id}/redeliver", REDELIVER)
    wait_until(lambda: len(server.received) > seen)  # its attempt is under way
    call("post", f"/deliveries/{delivery_id}/redeliver", REDELIVER)  # 409
    gate.set()
    call("post", "/deliveries/nope/redeliver", "/deliveries/{delivery_id}/redeliver")  # 404
    pull_only = {"topic": "booking_updated", "url": None, "secret": "signature_secret_0123"}
    pulled = call("post", R, R, json=pull_only).get_json()["id"]
    call("get", f"{R}/{pulled}", RID)  # its url null
    call("post", "/test", "/test", json={"topic": "booking_updated"})  # stored, not sent
    with host.app.app_context():
        [stored_id] = host.webhooks.trigger("booking_updated", {"n": 1})
    call("get", f"{R}/{pulled}/deliveries", D)  # stored
    call("get", f"/deliveries/{stored_id}", DID)
    call("post", f"/deliveries/{stored_id}/redeliver", REDELIVER)  # 409 pull_only
    call("post", f"{R}/{pulled}/recover", RECOVER, json=hour_ago)  # 409 pull_only
    state = get_state(host.app)
    running_clock, state.clock = state.clock, FrozenClock(state.clock.time())  # one minute
    limited = None
    for _ in range(host.app.config["KAIZEN_WEBHOOKS_TEST_CALLS_PER_MINUTE"] + 1):
        limited = call("post", "/test", "/test", json={"topic": "profile_updated"})
    assert limited is not None and limited.status_code == 429  # past the owner's limit
    for _ in range(host.app.config["KAIZEN_WEBHOOKS_REDELIVER_CALLS_PER_MINUTE"] + 1):
        limited = call("post", "/deliveries/nope/redeliver", REDELIVER)
    assert limited.status_code == 429
    for _ in range(host.app.config["KAIZEN_WEBHOOKS_REDELIVER_CALLS_PER_MINUTE"] + 1):
        limited = call("post", f"{R}/{rid}/recover", RECOVER, json=hour_ago)
    assert limited.status_code == 429
    state.clock = running_clock
    call("delete", f"{R}/{rid}?rev=1-00", RID)  # 409
    call("delete", f"{R}/{rid}?rev=a", RID, headers={**ADMIN, "If-Match": "b"})  # 422
    call("delete", f"{R}/{rid}?rev={rev}", RID)
    call("delete", f"{R}/{rid}?rev={rev}", RID)  # 404
    call("get", "/openapi.json", "/openapi.json", headers={})
    call("get", "/health", "/health", headers={})  # 200: the engine runs, nothing waits
    register(host, server.url("/later"))
    host.webhooks.shutdown(host.app)
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 2})
    call("get", "/health", "/health", headers={})  # 503: the engine stopped with work due
    LINKS = "/portal-links"
    call("post", LINKS, LINKS)  # no body: an hour
    call("post", LINKS, LINKS, json={"expires_in": 600})
    call("post", LINKS, LINKS, json={"expires_in": 0})  # 422
    call("post", LINKS, LINKS, data="[", content_type="application/json")  # 400
    call("post", LINKS, LINKS, data="{}", content_type="text/plain")  # 415
    call("post", LINKS, LINKS, json={"x": "y" * 70000})  # 413
    without_portal = make_host("sqlite", KAIZEN_WEBHOOKS_PORTAL=False).app.test_client()
    turned_off = without_portal.post(PREFIX + LINKS, headers=ADMIN)
    contract.check(turned_off, LINKS, "post")  # 404
    for template, item in contract.document["paths"].items():
        concrete = template.replace("{registration_id}", rid).replace("{delivery_id}", "x")
        for method in item:
            if method in ("parameters", "get") and template in ("/openapi.json", "/health"):
                continue
            if method != "parameters":
                call(method, concrete, template, headers={}, json={})  # 401
                call(method, concrete, template, headers=USER, json={})  # 403
    documented = {
        (path, method, status)
        for path, item in contract.document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
        for status in operation["responses"]
    }
    # Every documented answer of every operation was seen for real and conformed.
    assert documented == contract.covered, sorted(documented - contract.covered)
