"""Property-based fuzzing of the whole API from its OpenAPI document, on a running server: no
5xx, and every response conforms; and of every input the API reads with hostile text (NUL, lone
surrogates, thousands of digits): a 4xx naming the field. ``make fuzz`` runs many more
examples."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN

EXAMPLES = int(os.environ.get("KAIZEN_WEBHOOKS_FUZZ_EXAMPLES", "20"))
#: How every fuzzing run here is driven.
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
#: Operations that send webhooks to wherever the fuzzer's URLs point are left out.
SENDING = {"POST /test"}


def test_the_api_holds_up_to_generated_requests(make_host: Any, serve: Any) -> None:
    import schemathesis
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    # No dispatcher either: nothing the fuzzer registers is ever called.
    host = make_host("sqlite", KAIZEN_WEBHOOKS_EXECUTOR="none", KAIZEN_WEBHOOKS_ALLOW_HTTP=True)
    base = serve(host.app).url
    schema = schemathesis.openapi.from_url(f"{base}/v2/webhooks/openapi.json")
    schema.config.update(base_url=f"{base}/v2/webhooks")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in SENDING:
            continue

        @given(case=operation.as_strategy())
        @FUZZ
        def fuzz(case: Any) -> None:
            # Schema-valid is not always acceptable: opaque cursors and revs, business rules on
            # URLs and secrets, and ids that do not exist get precise 4xx answers by design.
            case.call_and_validate(headers=ADMIN, excluded_checks=[positive_data_acceptance])

        fuzz()
        tested.append(operation.label)
    document = host.app.test_client().get("/v2/webhooks/openapi.json").get_json()
    expected = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    # Schemathesis leaves out the operation that serves the document it was loaded from.
    assert set(tested) == expected - SENDING - {"GET /openapi.json"}


# Hostile text in every field ---------------------------------------------------------------------

#: Characters no field can hold: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8).
UNSTORABLE = st.one_of(st.just("\x00"), st.characters(categories=["Cs"]))
#: Around them, any text that a path segment or a header can carry.
FILLER = st.text(st.characters(exclude_characters="/\r\n"), max_size=12)
#: Strings with at least one character no field can hold, anywhere, and still there once sent
#: as JSON (where a high surrogate followed by a low one is a valid pair).
HOSTILE_TEXT = (
    st.tuples(FILLER, UNSTORABLE, st.lists(st.one_of(UNSTORABLE, FILLER)))
    .map(lambda parts: parts[0] + parts[1] + "".join(parts[2]))
    .filter(lambda text: re.search("[\x00\ud800-\udfff]", json.loads(json.dumps(text))))
)
#: What reaches the server through a URL: there, only NUL survives (werkzeug reads the bytes of
#: a surrogate as U+FFFD, or leaves them percent-encoded).
HOSTILE_URL_TEXT = st.tuples(HOSTILE_TEXT, FILLER).map(lambda parts: parts[0] + "\x00" + parts[1])
#: Numbers longer than ``int()`` reads (4,300 digits).
HUGE_DIGITS = st.builds(
    lambda head, n: head + "7" * n, st.text("0123456789"), st.integers(4301, 6000)
)
#: JSON numbers out of reach: thousands of digits, or exponents beyond any float.
HUGE_NUMBERS = st.one_of(
    st.builds(lambda sign, n: sign + "9" * n, st.sampled_from(["", "-"]), st.integers(4301, 6000)),
    st.integers(309, 10**6).map(lambda exponent: f"1e{exponent}"),
)


@dataclass(frozen=True)
class Target:
    """Where a generated value goes: a JSON field, a path id, a query argument or If-Match."""

    method: str
    path: str
    place: str
    field: str
    #: Whether thousands of digits there are refused (as a filter they may just match nothing).
    refuses_digits: bool = True

    def send(self, client: Any, registration: dict[str, str], value: str) -> Any:
        """The answer to a request with ``value`` in this target and valid values elsewhere."""
        path = self.path.format(**registration)
        document: dict[str, Any] = {
            "POST /registrations": {"topic": "profile_updated", "url": FUZZ_URL, "secret": SECRET},
            "PUT /registrations/{id}": {
                "topic": "profile_updated",
                "url": FUZZ_URL,
                "rev": registration["rev"],
            },
            "POST /registrations/{id}/rotate-secret": {"rev": registration["rev"]},
            "POST /test": {"topic": "profile_updated", "registration_id": registration["id"]},
        }.get(f"{self.method} {self.path}", {})
        headers = dict(ADMIN)
        query = ""
        if self.place == "json":
            document[self.field] = value
        elif self.place == "number":
            document[self.field] = "@number@"
        elif self.place == "path":
            path = path.replace("<value>", quote(value.encode("utf-8", "surrogatepass"), safe=""))
        elif self.place == "query":
            query = f"{self.field}={quote(value.encode('utf-8', 'surrogatepass'), safe='')}"
        else:
            headers["If-Match"] = value
        body = json.dumps(document).replace('"@number@"', value)
        return client.open(
            f"/v2/webhooks{path}",
            method=self.method,
            query_string=query,
            data=body if self.method in ("POST", "PUT") else None,
            content_type="application/json",
            headers=headers,
        )


SECRET = "signature_secret_0123"
#: Never sent to: the .invalid domain does not resolve.
FUZZ_URL = "https://hooks.fuzz.invalid/x"
TARGETS = [
    *(Target("POST", "/registrations", "json", field) for field in ("topic", "url", "secret")),
    *(
        Target("PUT", "/registrations/{id}", "json", field)
        for field in ("topic", "url", "secret", "rev", "state")
    ),
    Target("POST", "/registrations/{id}/rotate-secret", "json", "secret"),
    Target("POST", "/registrations/{id}/rotate-secret", "json", "rev"),
    Target("POST", "/registrations/{id}/rotate-secret", "number", "overlap_seconds"),
    Target("POST", "/test", "json", "topic"),
    Target("POST", "/test", "json", "registration_id"),
    *(
        Target(method, path, "path", "registration_id")
        for method, path in (
            ("GET", "/registrations/<value>"),
            ("PUT", "/registrations/<value>"),
            ("DELETE", "/registrations/<value>"),
            ("POST", "/registrations/<value>/rotate-secret"),
            ("GET", "/registrations/<value>/deliveries"),
        )
    ),
    Target("GET", "/deliveries/<value>", "path", "delivery_id"),
    Target("POST", "/deliveries/<value>/redeliver", "path", "delivery_id"),
    Target("GET", "/registrations", "query", "topic", refuses_digits=False),
    Target("GET", "/registrations", "query", "limit"),
    Target("GET", "/registrations", "query", "cursor"),
    Target("GET", "/registrations/{id}/deliveries", "query", "limit"),
    Target("GET", "/registrations/{id}/deliveries", "query", "cursor"),
    Target("DELETE", "/registrations/{id}", "query", "rev"),
    Target("DELETE", "/registrations/{id}", "header", "rev"),
    Target("PUT", "/registrations/{id}", "header", "rev"),
]


def refused_naming(response: Any, field: str) -> None:
    """A 4xx JSON error that names ``field``."""
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data()[:300])
    error = response.get_json()["error"]
    assert error["field"] == field, error


def fuzz_target(client: Any, registration: dict[str, str], target: Target) -> None:
    """Send hostile values to ``target``: refused by name (or, in a filter, digits just match
    nothing), never a 5xx."""
    hostile = HOSTILE_URL_TEXT if target.place in ("path", "query") else HOSTILE_TEXT

    @given(value=HUGE_NUMBERS if target.place == "number" else st.one_of(hostile, HUGE_DIGITS))
    @FUZZ
    def fuzz(value: str) -> None:
        response = target.send(client, registration, value)
        if value.isdigit() and not target.refuses_digits:
            assert response.status_code == 200, response.get_data()[:300]
        else:
            refused_naming(response, target.field)

    fuzz()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_hostile_text_and_huge_numbers_are_refused_by_name(make_host: Any, backend: str) -> None:
    """NUL, lone surrogates and numbers of thousands of digits in every input the API reads:
    never a 5xx, always a 4xx naming the field (or, for a filter, just no match)."""
    host = make_host(backend, KAIZEN_WEBHOOKS_DISPATCHER="none")
    client = host.app.test_client()
    created = client.post(
        "/v2/webhooks/registrations",
        json={"topic": "profile_updated", "url": FUZZ_URL, "secret": SECRET},
        headers=ADMIN,
    )
    assert created.status_code == 201
    registration = created.get_json()
    for target in TARGETS:
        fuzz_target(client, registration, target)
    # Nothing was changed by any of it.
    current = client.get(f"/v2/webhooks/registrations/{registration['id']}", headers=ADMIN)
    assert current.get_json()["rev"] == registration["rev"]
