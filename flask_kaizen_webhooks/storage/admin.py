"""The operator's queries, across owners: registrations and deliveries found by filters,
statistics, purging what is finished, and the per-owner call counts behind the API's limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..clock import as_utc
from .tables import (
    TEST_MODE,
    Attempt,
    CallCount,
    Delivery,
    DeliveryStatus,
    Event,
    Registration,
    RegistrationState,
)


def find_registrations(
    session: Session, *, topic: str | None, owner: str | None, state: str | None
) -> Sequence[Registration]:
    """Every registration (of any owner), filtered, oldest first."""
    query = _matching_registrations(select(Registration), topic=topic, owner=owner, state=state)
    return session.scalars(query.order_by(Registration.created_at, Registration.id)).all()


def retrying_counts(
    session: Session, *, topic: str | None, owner: str | None, state: str | None
) -> dict[str, int]:
    """How many deliveries of each registration :func:`find_registrations` finds wait for a
    retry after a failed attempt (pending, with an attempt made), in one grouped query;
    registrations without any are left out."""
    matching = _matching_registrations(
        select(Registration.id), topic=topic, owner=owner, state=state
    )
    rows = session.execute(
        select(Delivery.registration_id, func.count())
        .where(
            Delivery.registration_id.in_(matching),
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.attempts > 0,
        )
        .group_by(Delivery.registration_id)
    )
    return {registration_id: count for registration_id, count in rows}


def _matching_registrations(
    query: Select[Any], *, topic: str | None, owner: str | None, state: str | None
) -> Select[Any]:
    """``query`` of registrations narrowed to a topic, an owner and a state, where given."""
    if topic is not None:
        query = query.where(Registration.topic == topic)
    if owner is not None:
        query = query.where(Registration.owner == owner)
    if state is not None:
        query = query.where(Registration.state == state)
    return query


def find_deliveries(
    session: Session,
    *,
    status: str | None,
    registration_id: str | None,
    since: datetime | None,
    until: datetime | None = None,
    limit: int | None,
) -> Sequence[Delivery]:
    """Deliveries of any owner, filtered, newest first."""
    query = select(Delivery)
    if status is not None:
        query = query.where(Delivery.status == status)
    if registration_id is not None:
        query = query.where(Delivery.registration_id == registration_id)
    if since is not None:
        query = query.where(Delivery.created_at >= since)
    if until is not None:
        query = query.where(Delivery.created_at < until)
    query = query.order_by(Delivery.created_at.desc(), Delivery.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return session.scalars(query).all()


def purge_completed(session: Session, *, before: datetime) -> tuple[int, int]:
    """Delete finished deliveries (pull-only registrations' stored ones too) completed before
    ``before`` with their attempts; pending ones are never touched. Returns (deliveries,
    attempts) deleted."""
    done = select(Delivery.id).where(
        Delivery.status.in_(
            [DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED, DeliveryStatus.STORED]
        ),
        Delivery.completed_at < before,
    )
    attempts = session.execute(
        delete(Attempt)
        .where(Attempt.delivery_id.in_(done))
        .execution_options(synchronize_session=False)
    )
    deliveries = session.execute(
        delete(Delivery).where(Delivery.id.in_(done)).execution_options(synchronize_session=False)
    )
    return deliveries.rowcount, attempts.rowcount  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts of deliveries per status and topic (tests left out), the test deliveries and how
    many of them failed, the events not fanned out yet, and the creation of the oldest pending
    one (delivery or event)."""

    counts: dict[tuple[str, str], int]
    oldest_pending: datetime | None
    events_waiting: int = 0
    tests: int = 0
    tests_failed: int = 0
    #: Pending deliveries a worker holds a claim on (being sent), and when the last claim ends.
    claimed: int = 0
    claimed_until: datetime | None = None
    #: Pending deliveries of FIFO registrations set aside to wait their turn.
    waiting_turn: int = 0


def delivery_stats(session: Session, *, now: datetime) -> Stats:
    """How many deliveries there are per (topic, status), tests apart, how many events wait for
    their fan-out, and how old the oldest pending work is."""
    rows = session.execute(
        select(Delivery.topic, Delivery.status, func.count())
        .where(Delivery.mode != TEST_MODE)
        .group_by(Delivery.topic, Delivery.status)
    )
    counts = {(topic, status): count for topic, status, count in rows}
    tests = dict(
        session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.mode == TEST_MODE)
            .group_by(Delivery.status)
        ).all()
    )
    oldest_delivery = session.scalar(
        select(func.min(Delivery.created_at)).where(Delivery.status == DeliveryStatus.PENDING)
    )
    waiting, oldest_event = session.execute(
        select(func.count(), func.min(Event.created_at)).select_from(Event)
    ).one()
    claimed, claimed_until = session.execute(
        select(func.count(), func.max(Delivery.next_attempt_at)).where(
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.claim_token.is_not(None),
            Delivery.next_attempt_at > now,
        )
    ).one()
    waiting_turn = session.scalar(
        select(func.count()).where(
            Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at.is_(None)
        )
    )
    oldest = [as_utc(moment) for moment in (oldest_delivery, oldest_event) if moment is not None]
    return Stats(
        counts=counts,
        oldest_pending=min(oldest, default=None),
        events_waiting=int(waiting),
        tests=sum(tests.values()),
        tests_failed=tests.get(DeliveryStatus.FAILED, 0),
        claimed=int(claimed),
        claimed_until=None if claimed_until is None else as_utc(claimed_until),
        waiting_turn=int(waiting_turn or 0),
    )


def oldest_due(
    session: Session, *, now: datetime, every_registration_paced: bool = False
) -> datetime | None:
    """When the oldest work due now and not taken became due: a pending delivery (its due time)
    or an event not fanned out yet (when it was committed); None when nothing waits. Deliveries
    that wait for a rate limit of their registration's own (or, ``every_registration_paced``,
    the operator's default) wait by design, and are left out."""
    query = select(func.min(Delivery.next_attempt_at)).where(
        Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now
    )
    if every_registration_paced:
        delivery = None
    else:
        paced = select(Registration.id).where(Registration.max_per_second.is_not(None))
        delivery = session.scalar(query.where(Delivery.registration_id.not_in(paced)))
    event = session.scalar(select(func.min(Event.created_at)))
    return min((as_utc(m) for m in (delivery, event) if m is not None), default=None)


def count_call(session: Session, *, key: str, minute: int) -> int:
    """Count one call of ``key`` in ``minute`` (minutes since the epoch); the calls counted in
    that minute so far, this one included, in one atomic step however many processes count
    at once. Counts of earlier minutes (anyone's) are deleted."""
    session.execute(  # everyone's earlier minutes: owners who stopped calling leave no rows
        delete(CallCount)
        .where(CallCount.minute < minute)
        .execution_options(synchronize_session=False)
    )
    dialect = session.get_bind().dialect.name
    upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    counted = (
        upsert(CallCount)
        .values(key=key, minute=minute, count=1)
        .on_conflict_do_update(
            index_elements=[CallCount.key, CallCount.minute], set_={"count": CallCount.count + 1}
        )
        .returning(CallCount.count)
    )
    return int(session.execute(counted).scalar_one())


#: The most failing registrations the metrics name, the longest runs of failures first.
MOST_FAILING = 100


@dataclass(frozen=True, slots=True)
class Gauges:
    """What the metrics read from the database at scrape time."""

    #: Deliveries by status, tests apart (every status present, 0 if none).
    deliveries: dict[str, int]
    #: Registrations by state (every state present).
    registrations: dict[str, int]
    #: See :func:`oldest_due`.
    oldest_due: datetime | None
    #: Active registrations with deliveries failed for good since their last success, and how
    #: many in a row (at most :data:`MOST_FAILING`, the longest runs first).
    failing: list[tuple[str, int]]


def gauges(
    session: Session, *, now: datetime, every_registration_paced: bool, timeout: float = 10.0
) -> Gauges:
    """Read :class:`Gauges` in four queries (on PostgreSQL, each stopped after ``timeout``
    seconds: a scrape never holds a connection long)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {int(timeout * 1000)}"))
    deliveries = dict.fromkeys(DeliveryStatus, 0) | dict(
        session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.mode != TEST_MODE)
            .group_by(Delivery.status)
        ).all()
    )
    registrations = dict.fromkeys(RegistrationState, 0) | dict(
        session.execute(select(Registration.state, func.count()).group_by(Registration.state)).all()
    )
    failing = session.execute(
        select(Registration.id, Registration.consecutive_failures)
        .where(
            Registration.state == RegistrationState.ACTIVE,
            Registration.consecutive_failures > 0,
        )
        .order_by(Registration.consecutive_failures.desc(), Registration.id)
        .limit(MOST_FAILING)
    ).all()
    return Gauges(
        deliveries={str(status): count for status, count in deliveries.items()},
        registrations={str(state): count for state, count in registrations.items()},
        oldest_due=oldest_due(session, now=now, every_registration_paced=every_registration_paced),
        failing=[(registration_id, count) for registration_id, count in failing],
    )
