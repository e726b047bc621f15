"""The tables' handles and the row types the queries share, detached from any session, with
the query fragments more than one of them needs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_

from ..clock import as_utc
from .tables import Attempt, Delivery, DeliveryStatus, Event, Ordering, Registration, metadata

DELIVERIES = metadata.tables[Delivery.__tablename__]


EVENTS = metadata.tables[Event.__tablename__]


ATTEMPTS = metadata.tables[Attempt.__tablename__]


REGISTRATIONS = metadata.tables[Registration.__tablename__]


INSERT_ATTEMPTS = insert(ATTEMPTS)


class Outcome(enum.StrEnum):
    """What follows an attempt."""

    SUCCEEDED = "succeeded"
    #: Tried again later.
    RETRY = "retry"
    #: Failed for good: the retry schedule is used up.
    FAILED = "failed"
    #: The receiver answered 410: its registration is disabled.
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a page of registrations or deliveries ends: the sort key of its last item."""

    created_at: datetime
    id: str


@dataclass(frozen=True, slots=True)
class Target:
    """What a delivery needs of its registration, detached from any session."""

    registration_id: str
    owner: str
    #: None: a pull-only registration, whose deliveries are stored for its feed, never sent.
    url: str | None
    #: The secret as stored (sealed); opened only to sign.
    sealed_secret: str
    secret_version: int = 1
    #: During a rotation's overlap, the previous secret (sealed) and when it stops signing.
    previous_sealed_secret: str | None = None
    previous_secret_until: datetime | None = None
    #: Its deliveries go one at a time, in creation order (``ordering`` ``"fifo"``).
    ordered: bool = False
    #: Its own ``max_per_second``, if it has one.
    max_per_second: int | None = None


@dataclass(frozen=True, slots=True)
class PushTarget(Target):
    """A target that is pushed to: what a claimed delivery is sent to."""

    url: str


def pushed(target: Target) -> PushTarget | None:
    """``target`` as one that is pushed to; None for a pull-only registration."""
    if target.url is None:
        return None
    return PushTarget(**{field.name: getattr(target, field.name) for field in fields(target)})


TARGET_COLUMNS = (
    Registration.id,
    Registration.owner,
    Registration.url,
    Registration.secret,
    Registration.secret_version,
    Registration.previous_secret,
    Registration.previous_secret_until,
    Registration.ordering,
    Registration.max_per_second,
)


def target_from_row(
    registration_id: str,
    owner: str,
    url: str | None,
    sealed_secret: str,
    secret_version: int,
    previous_sealed_secret: str | None,
    previous_secret_until: datetime | None,
    ordering: str = Ordering.NONE,
    max_per_second: int | None = None,
) -> Target:
    """A :class:`Target` from a row of :data:`TARGET_COLUMNS`."""
    until = None if previous_secret_until is None else as_utc(previous_secret_until)
    return Target(
        registration_id,
        owner,
        url,
        sealed_secret,
        secret_version,
        previous_sealed_secret,
        until,
        ordering == Ordering.FIFO,
        max_per_second,
    )


@dataclass(frozen=True, slots=True)
class Finished:
    """A delivery made at once (synchronous or a test), with its single attempt."""

    delivery_id: str
    target: Target
    payload: str
    succeeded: bool
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    elapsed: float


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed delivery with what its attempt needs; ``target`` is None when its registration
    was deleted or disabled meanwhile."""

    delivery_id: str
    token: str
    topic: str
    payload: str
    attempts: int
    retry_index: int
    registration_id: str
    target: PushTarget | None
    #: When the claim's lease runs out, unless renewed.
    lease_until: datetime
    #: When the delivery was queued: its event fired (or, made before that was kept, stored),
    #: or a redelivery or recovery asked for it.
    queued_at: datetime
    #: The W3C ``traceparent`` its event was fired under, if any (its attempts' spans' parent).
    trace_parent: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of a claimed delivery and what follows it, ready to be written."""

    delivery_id: str
    token: str
    registration_id: str
    topic: str
    number: int
    retry_index: int
    started_at: datetime
    finished_at: datetime
    elapsed: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    kind: Outcome
    #: When the next attempt is due, for a retry.
    retry_at: datetime | None = None
    #: Its registration is FIFO (``ordering`` ``"fifo"``).
    ordered: bool = False
    #: What the attempt came to, in a word (see :func:`..delivery.outcomes.outcome_of`).
    outcome: str = ""
    #: When the delivery was queued (its latency runs from there).
    queued_at: datetime | None = None

    @property
    def final(self) -> bool:
        """True when the delivery ends with this attempt."""
        return self.kind is not Outcome.RETRY


def ended_unsent(error: str, now: datetime) -> dict[str, Any]:
    """The values that end a pending delivery that will not be sent, failed with ``error``."""
    return {
        "status": DeliveryStatus.FAILED,
        "last_error": error,
        "claim_token": None,
        "next_attempt_at": None,
        "completed_at": now,
        "updated_at": now,
    }


def not_claimed(now: datetime) -> Any:
    """Deliveries no worker holds: never claimed, or their claim's lease has run out."""
    return or_(Delivery.claim_token.is_(None), Delivery.next_attempt_at <= now)
