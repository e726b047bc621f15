"""Recording attempts: what a batch of results does to its deliveries and registrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage import claims, registrations, results
from flask_kaizen_webhooks.storage.rows import AttemptRecord, Claimed, Outcome
from flask_kaizen_webhooks.storage.tables import Registration
from tests.conftest import DELIVERY_CONFIG, register


@pytest.fixture
def host(make_host: Any, backend: str) -> Any:
    """No engine: the test claims and records by hand."""
    return make_host(backend, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")


def claimed_pair(host: Any) -> list[Claimed]:
    """Two due deliveries of one registration, claimed."""
    registration = register(host, "http://127.0.0.1:9/hook")
    with host.app.app_context():
        host.webhooks.trigger("profile_updated", {"n": 1})
        host.webhooks.trigger("profile_updated", {"n": 2})
        now = datetime.now(UTC)  # the deliveries are due from the real time
        with get_state().database.writing() as session:
            found = claims.claim_due(
                session,
                now=now + timedelta(days=1),
                lease_until=now + timedelta(days=2),
                token="t-1",
                limit=10,
            )
    assert {item.registration_id for item in found} == {registration["id"]}
    return found


def record(item: Claimed, kind: Outcome, status: int) -> AttemptRecord:
    now = datetime.now(UTC)
    return AttemptRecord(
        delivery_id=item.delivery_id,
        token=item.token,
        registration_id=item.registration_id,
        topic=item.topic,
        number=1,
        retry_index=0,
        started_at=now,
        finished_at=now,
        elapsed=0.01,
        status_code=status,
        error=None if kind is Outcome.SUCCEEDED else f"HTTP {status}",
        response_excerpt=None,
        kind=kind,
    )


def test_a_success_after_a_failure_in_one_batch_ends_the_run_of_failures(host: Any) -> None:
    first, second = claimed_pair(host)
    batch = [record(first, Outcome.FAILED, 500), record(second, Outcome.SUCCEEDED, 200)]
    with host.app.app_context():
        with get_state().database.writing() as session:
            recorded = results.record_attempts(
                session, batch, disable_after_failures=5, disable_after=timedelta(0)
            )
        assert len(recorded.kept) == 2 and recorded.disabled == {}
        with get_state().database.independent_session() as session:
            stored = session.get(Registration, first.registration_id)
            assert stored is not None
            assert (stored.consecutive_failures, stored.failing_since) == (0, None)


def test_failures_in_one_batch_are_counted_and_disable_at_the_threshold(host: Any) -> None:
    first, second = claimed_pair(host)
    batch = [record(first, Outcome.FAILED, 500), record(second, Outcome.FAILED, 500)]
    with host.app.app_context():
        with get_state().database.writing() as session:
            recorded = results.record_attempts(
                session, batch, disable_after_failures=2, disable_after=timedelta(0)
            )
        assert list(recorded.disabled) == [first.registration_id]
        with get_state().database.independent_session() as session:
            stored = registrations.get_registration(
                session, owner="org-1", registration_id=first.registration_id
            )
            assert (stored.state, stored.consecutive_failures) == ("disabled", 2)
