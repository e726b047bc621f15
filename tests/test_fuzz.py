"""Property-based fuzzing of the whole API from its OpenAPI document, on a running server:
no 5xx, and every response conforms. ``make fuzz`` runs many more examples."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.conftest import ADMIN

EXAMPLES = int(os.environ.get("KAIZEN_WEBHOOKS_FUZZ_EXAMPLES", "20"))
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
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
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
