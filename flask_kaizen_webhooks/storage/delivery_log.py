"""The delivery log of webhooks sent at once (synchronous topics and tests): each delivery with
its single attempt, written after the fact; and those of pull-only registrations, stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.orm import Session

from .rows import DELIVERIES, INSERT_ATTEMPTS, Finished
from .tables import DeliveryStatus

_INSERT_DELIVERIES = insert(DELIVERIES)


@dataclass(frozen=True, slots=True)
class Stored:
    """A delivery made at once for a pull-only registration: kept for its feed, never sent."""

    delivery_id: str
    registration_id: str
    owner: str
    payload: str


def log_finished(
    session: Session,
    finished: Sequence[Finished],
    *,
    topic: str,
    mode: str,
    started_at: datetime,
    now: datetime,
) -> None:
    """Record deliveries made at once, each with its single attempt, in two statements."""
    if not finished:
        return
    connection = session.connection()
    connection.execute(
        _INSERT_DELIVERIES,
        [
            {
                "id": entry.delivery_id,
                "registration_id": entry.target.registration_id,
                "owner": entry.target.owner,
                "topic": topic,
                "mode": mode,
                "payload": entry.payload,
                "status": DeliveryStatus.SUCCEEDED if entry.succeeded else DeliveryStatus.FAILED,
                "attempts": 1,
                "retry_index": 0,
                "next_attempt_at": None,
                "last_status_code": entry.status_code,
                "last_error": entry.error,
                "response_excerpt": entry.response_excerpt,
                "created_at": started_at,
                "updated_at": now,
                "completed_at": now,
            }
            for entry in finished
        ],
    )
    connection.execute(
        INSERT_ATTEMPTS,
        [
            {
                "delivery_id": entry.delivery_id,
                "number": 1,
                "started_at": started_at,
                "elapsed": entry.elapsed,
                "status_code": entry.status_code,
                "error": entry.error,
                "response_excerpt": entry.response_excerpt,
            }
            for entry in finished
        ],
    )


def log_stored(
    session: Session,
    stored: Sequence[Stored],
    *,
    topic: str,
    mode: str,
    started_at: datetime,
    now: datetime,
) -> None:
    """Record deliveries of pull-only registrations made at once, finished and unattempted, in
    one statement."""
    if not stored:
        return
    session.connection().execute(
        _INSERT_DELIVERIES,
        [
            {
                "id": entry.delivery_id,
                "registration_id": entry.registration_id,
                "owner": entry.owner,
                "topic": topic,
                "mode": mode,
                "payload": entry.payload,
                "status": DeliveryStatus.STORED,
                "attempts": 0,
                "retry_index": 0,
                "next_attempt_at": None,
                "created_at": now,  # when it comes to exist: a feed read before has not passed it
                "updated_at": now,
                "completed_at": now,
            }
            for entry in stored
        ],
    )
