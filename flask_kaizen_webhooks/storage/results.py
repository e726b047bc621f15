"""Recording attempts: each attempt and its delivery's new state in a few statements, and the
health of registrations, which a run of failures (or a 410) disables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from ..clock import as_utc
from . import fifo
from .registrations import FAILURES_CLEARED, change_state, disable_if_active
from .rows import DELIVERIES, INSERT_ATTEMPTS, REGISTRATIONS, AttemptRecord, Outcome
from .tables import DeliveryStatus, Registration, RegistrationState

#: Why a registration whose receiver answered 410 is disabled.
GONE_REASON = "the receiver answered 410 Gone"


@dataclass(frozen=True, slots=True)
class Recorded:
    """What :func:`record_attempts` wrote: the records whose claim still held, and the
    registrations it disabled, with why."""

    kept: list[AttemptRecord]
    disabled: dict[str, str]


_RECORD_UPDATE = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        retry_index=bindparam("b_retry_index"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        claim_token=None,
        last_status_code=bindparam("b_status_code"),
        last_error=bindparam("b_error"),
        response_excerpt=bindparam("b_excerpt"),
        updated_at=bindparam("b_now"),
        completed_at=bindparam("b_completed_at"),
    )
)


_HELD = (
    select(DELIVERIES.c.id, DELIVERIES.c.claim_token)
    .where(DELIVERIES.c.id.in_(bindparam("b_ids", expanding=True)))
    .with_for_update()
)


_HEALTHY = (
    update(REGISTRATIONS)
    .where(
        REGISTRATIONS.c.id.in_(bindparam("b_ids", expanding=True)),
        REGISTRATIONS.c.consecutive_failures > 0,
    )
    .values(**FAILURES_CLEARED)
)


def record_attempts(
    session: Session,
    records: Sequence[AttemptRecord],
    *,
    disable_after_failures: int,
    disable_after: timedelta,
) -> Recorded:
    """Write many attempts and their deliveries' new states in a few statements.

    A record whose claim was lost meanwhile (its lease ran out and another worker took the
    delivery) is left out. Registrations are kept in step: a 410 disables one, a success ends
    its run of failures, a long run of failures disables it.
    """
    if not records:
        return Recorded([], {})
    connection = session.connection()
    held = dict(
        connection.execute(
            _HELD, {"b_ids": sorted({record.delivery_id for record in records})}
        ).all()
    )
    kept = [record for record in records if held.get(record.delivery_id) == record.token]
    if not kept:
        return Recorded([], {})
    connection.execute(_RECORD_UPDATE, [_delivery_values(record) for record in kept])
    ordered = [record for record in kept if record.ordered]
    fifo.next_one_due(
        connection,
        [(record.registration_id, record.finished_at) for record in ordered if record.final],
    )
    connection.execute(
        INSERT_ATTEMPTS,
        [
            {
                "delivery_id": record.delivery_id,
                "number": record.number,
                "started_at": record.started_at,
                "elapsed": record.elapsed,
                "status_code": record.status_code,
                "error": record.error,
                "response_excerpt": record.response_excerpt,
            }
            for record in kept
        ],
    )
    disabled = _registration_health(
        session,
        [record for record in kept if record.final],
        disable_after_failures=disable_after_failures,
        disable_after=disable_after,
    )
    return Recorded(kept, disabled)


def _delivery_values(record: AttemptRecord) -> dict[str, Any]:
    retry = record.kind is Outcome.RETRY
    if retry:
        status = DeliveryStatus.PENDING
    elif record.kind is Outcome.SUCCEEDED:
        status = DeliveryStatus.SUCCEEDED
    else:
        status = DeliveryStatus.FAILED
    return {
        "b_id": record.delivery_id,
        "b_status": status,
        "b_attempts": record.number,
        "b_retry_index": record.retry_index + 1 if retry else record.retry_index,
        "b_next_attempt_at": record.retry_at if retry else None,
        "b_status_code": record.status_code,
        "b_error": record.error,
        "b_excerpt": record.response_excerpt,
        "b_now": record.finished_at,
        "b_completed_at": None if retry else record.finished_at,
    }


def _registration_health(
    session: Session,
    finals: Sequence[AttemptRecord],
    *,
    disable_after_failures: int,
    disable_after: timedelta,
) -> dict[str, str]:
    """Apply ended deliveries to their registrations; the ones disabled, with why."""
    disabled: dict[str, str] = {}
    healthy = {record.registration_id for record in finals if record.kind is Outcome.SUCCEEDED}
    unhealthy = {
        record.registration_id for record in finals if record.kind is not Outcome.SUCCEEDED
    }
    if healthy - unhealthy:  # the common case: one statement for every registration doing well
        session.connection().execute(_HEALTHY, {"b_ids": sorted(healthy - unhealthy)})
    for record in finals:  # in order, for registrations with a failure among them
        if record.registration_id not in unhealthy or record.registration_id in disabled:
            continue
        if record.kind is Outcome.GONE:
            if disable_if_active(
                session, record.registration_id, reason=GONE_REASON, now=record.finished_at
            ):
                disabled[record.registration_id] = GONE_REASON
            continue
        reason_or_none = note_delivery_outcome(
            session,
            registration_id=record.registration_id,
            succeeded=record.kind is Outcome.SUCCEEDED,
            now=record.finished_at,
            disable_after_failures=disable_after_failures,
            disable_after=disable_after,
        )
        if reason_or_none is not None:
            disabled[record.registration_id] = reason_or_none
    return disabled


def note_delivery_outcome(
    session: Session,
    *,
    registration_id: str,
    succeeded: bool,
    now: datetime,
    disable_after_failures: int,
    disable_after: timedelta,
) -> str | None:
    """Track a registration's run of failed deliveries; the reason if this one disables it."""
    if succeeded:
        session.flush()  # an earlier record's count, changed on the object, is written first
        session.connection().execute(_HEALTHY, {"b_ids": [registration_id]})
        return None
    registration = session.get(Registration, registration_id, with_for_update=True)
    if registration is None or registration.state != RegistrationState.ACTIVE:
        return None
    if registration.url is None:  # made pull-only while the attempt was under way
        return None
    registration.consecutive_failures += 1
    if registration.failing_since is None:
        registration.failing_since = now
    failing_for = now - as_utc(registration.failing_since)
    if registration.consecutive_failures >= disable_after_failures and failing_for >= disable_after:
        reason = (
            f"{registration.consecutive_failures} deliveries in a row failed for good over "
            f"{failing_for.total_seconds() / 3600:.1f} h"
        )
        change_state(registration, RegistrationState.DISABLED, reason=reason, now=now)
        return reason
    return None
