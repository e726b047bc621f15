"""The delivery queue: claiming due deliveries with a lease, renewing and giving back claims,
ending what cannot be sent, and queuing deliveries again."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from ..clock import as_utc
from ..errors import (
    DeliveryInFlight,
    PullOnlyRegistration,
    RegistrationDeleted,
    RegistrationDisabled,
)
from . import fifo
from .holders import Holder, this_process
from .reads import get_delivery
from .rows import (
    DELIVERIES,
    TARGET_COLUMNS,
    Claimed,
    PushTarget,
    ended_unsent,
    not_claimed,
    pushed,
    target_from_row,
)
from .tables import (
    TEST_MODE,
    Delivery,
    DeliveryStatus,
    Registration,
    RegistrationState,
)


def _waits_its_turn() -> Any:
    """True for a delivery of a FIFO registration with an earlier one of theirs still pending
    (due, claimed or waiting for a retry): it waits for that one to succeed or fail for good."""
    columns, earlier = DELIVERIES.c, DELIVERIES.alias("earlier").c
    ahead = (
        select(earlier.id)
        .where(
            # Along the index of pending deliveries: the condition repeats its predicate.
            earlier.status == fifo.PENDING,
            earlier.registration_id == columns.registration_id,
            earlier.created_at <= columns.created_at,
            or_(earlier.created_at < columns.created_at, earlier.id < columns.id),
        )
        .exists()
    )
    return and_(columns.registration_id.in_(fifo.ORDERED), ahead)


def _due_statement(*, skipping: bool) -> Any:
    """Up to ``b_limit`` due deliveries, oldest due first, locked (skipping rows other
    claimers hold), leaving those of registrations ``b_skip`` alone when ``skipping``: their
    ids, and whether each waits its turn (see :func:`_waits_its_turn`)."""
    columns = DELIVERIES.c
    due = select(columns.id, _waits_its_turn().label("waits")).where(
        columns.status == DeliveryStatus.PENDING,
        columns.next_attempt_at <= bindparam("b_now"),
    )
    if skipping:
        due = due.where(columns.registration_id.not_in(bindparam("b_skip", expanding=True)))
    return (
        due.order_by(columns.next_attempt_at)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )


_SET_ASIDE = fifo.set_aside_statement(_waits_its_turn())

#: Rounds of one claim that go on past deliveries set aside (see :mod:`.fifo`).
SET_ASIDE_ROUNDS = 16

# Built once: claiming runs for every few deliveries. Two statements rather than one
# ``UPDATE ... WHERE id IN (SELECT ...)``, which PostgreSQL may plan as a scan of every
# pending row; here the update finds its rows by primary key.
_DUE = {skipping: _due_statement(skipping=skipping) for skipping in (False, True)}


# Due still: on SQLite the rows were read outside the write transaction, and another process
# may have claimed some of them since.
_TAKE = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.id.in_(bindparam("b_ids", expanding=True)),
        DELIVERIES.c.status == DeliveryStatus.PENDING,
        DELIVERIES.c.next_attempt_at <= bindparam("b_now"),
    )
    .values(claim_token=bindparam("b_token"), next_attempt_at=bindparam("b_lease_until"))
    .returning(
        DELIVERIES.c.id,
        DELIVERIES.c.topic,
        DELIVERIES.c.payload,
        DELIVERIES.c.attempts,
        DELIVERIES.c.retry_index,
        DELIVERIES.c.registration_id,
        func.coalesce(DELIVERIES.c.queued_at, DELIVERIES.c.created_at),
        DELIVERIES.c.trace_parent,
    )
)


_TARGETS_OF = select(*TARGET_COLUMNS, Registration.state).where(
    Registration.id.in_(bindparam("b_ids", expanding=True))
)


# Claimed deliveries of registrations made pull-only after they were: kept for the feed.
_STORE = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.id.in_(bindparam("b_ids", expanding=True)),
        DELIVERIES.c.claim_token == bindparam("b_token"),
    )
    .values(
        status=DeliveryStatus.STORED,
        claim_token=None,
        next_attempt_at=None,
        completed_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
    )
)


def claim_due(
    session: Session,
    *,
    now: datetime,
    lease_until: datetime,
    token: str,
    limit: int,
    skip_registrations: Collection[str] = (),
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries, oldest due first, leaving those of
    ``skip_registrations`` alone, and load them with their registrations; no two claimers get
    the same row.

    PostgreSQL skips rows other claimers hold (``FOR UPDATE SKIP LOCKED``); SQLite runs one
    writer at a time, which makes the same statement exclusive there.
    """
    connection = session.connection()
    params: dict[str, Any] = {"b_now": now}
    if skip_registrations:
        params["b_skip"] = sorted(skip_registrations)
    fifo.sweep_now_and_then(connection, now=now)
    claimed: list[Claimed] = []
    for _ in range(SET_ASIDE_ROUNDS):
        params["b_limit"] = limit - len(claimed)
        rows = connection.execute(_DUE[bool(skip_registrations)], params).all()
        waiting = [row.id for row in rows if row.waits]
        if waiting:
            connection.execute(_SET_ASIDE, {"b_ids": waiting, "b_now": now})
        ready = [row.id for row in rows if not row.waits]
        claimed += _take(connection, ready, now=now, token=token, lease_until=lease_until)
        if not waiting or len(claimed) >= limit:
            break
    return claimed


def overdue(session: Session, *, due_before: datetime, limit: int) -> list[str]:
    """Pending deliveries due before ``due_before`` (their claims run out by then, if any),
    oldest first: work whose task or worker went missing."""
    query = (
        select(DELIVERIES.c.id)
        .where(
            DELIVERIES.c.status == DeliveryStatus.PENDING,
            DELIVERIES.c.next_attempt_at <= due_before,
        )
        .order_by(DELIVERIES.c.next_attempt_at)
        .limit(limit)
    )
    return list(session.execute(query).scalars())


def _take(
    connection: Connection, ids: list[str], *, now: datetime, token: str, lease_until: datetime
) -> list[Claimed]:
    """Claim the (locked, due) deliveries ``ids`` with ``token`` until ``lease_until``; them,
    loaded with their registrations. Those of registrations made pull-only since they were
    made are stored instead, never sent."""
    if not ids:
        return []
    rows = connection.execute(
        _TAKE, {"b_ids": ids, "b_now": now, "b_token": token, "b_lease_until": lease_until}
    ).all()
    targets: dict[str, PushTarget | None] = {}
    pull_only: set[str] = set()
    registration_ids = sorted({row.registration_id for row in rows})
    row: Any
    for row in connection.execute(_TARGETS_OF, {"b_ids": registration_ids}):
        *target, state = row  # TARGET_COLUMNS, then the registration's state
        found = target_from_row(*target)
        targets[row[0]] = pushed(found) if state == RegistrationState.ACTIVE else None
        if found.url is None:
            pull_only.add(found.registration_id)
    if pull_only:
        stored = [row.id for row in rows if row.registration_id in pull_only]
        connection.execute(_STORE, {"b_ids": stored, "b_token": token, "b_now": now})
        rows = [row for row in rows if row.registration_id not in pull_only]
    return [
        Claimed(
            delivery_id,
            token,
            topic,
            payload,
            attempts,
            retry_index,
            registration_id,
            targets.get(registration_id),
            lease_until,
            as_utc(queued_at),
            trace_parent,
        )
        for (
            delivery_id,
            topic,
            payload,
            attempts,
            retry_index,
            registration_id,
            queued_at,
            trace_parent,
        ) in rows
    ]


def release_claims(session: Session, claims: Sequence[tuple[str, str]], *, due: datetime) -> None:
    """Give claimed deliveries (id, token) back unattempted, due at ``due``."""
    if not claims:
        return
    session.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id == bindparam("b_id"), DELIVERIES.c.claim_token == bindparam("b_token")
        )
        .values(claim_token=None, next_attempt_at=due),
        [{"b_id": delivery_id, "b_token": token} for delivery_id, token in claims],
    )


def extend_claim(session: Session, *, delivery_id: str, token: str, lease_until: datetime) -> bool:
    """Renew this worker's lease on a delivery as its attempt starts; False if it was lost."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.claim_token == token,
            Delivery.status == DeliveryStatus.PENDING,
        )
        .values(next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def finish_without_attempt(
    session: Session, *, delivery_id: str, token: str, error: str, now: datetime
) -> bool:
    """Fail a claimed delivery that cannot be sent; False if the claim was lost."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.claim_token == token)
        .values(**ended_unsent(error, now))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release_dead_claims(session: Session, *, now: datetime) -> int:
    """Give back, due now, the claims held by processes of this machine that no longer run
    (see :mod:`.holders`); how many deliveries."""
    me = this_process()
    tokens = session.scalars(
        select(Delivery.claim_token)
        .where(
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at > now,
            Delivery.claim_token.like(f"{me.machine}-%"),
        )
        .distinct()
    ).all()
    runs: dict[Holder, bool] = {me: True}
    dead = []
    for token in tokens:
        holder = Holder.of(token or "")
        if holder is None:
            continue
        if holder not in runs:
            runs[holder] = holder.runs()
        if not runs[holder]:
            dead.append(token)
    if not dead:
        return 0
    released = session.execute(
        update(Delivery)
        .where(Delivery.claim_token.in_(dead), Delivery.status == DeliveryStatus.PENDING)
        .values(claim_token=None, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(released.rowcount)  # type: ignore[attr-defined]


#: What :func:`queue_again` finds in place of the state of a pull-only registration.
PULL_ONLY = "pull-only"


@dataclass(frozen=True, slots=True)
class Requeued:
    """What :func:`queue_again` did with each delivery it was given."""

    queued: list[str]
    #: Left alone: an attempt of each is under way.
    in_flight: list[str]
    #: Left alone: their registration was deleted, or is disabled.
    registration_deleted: list[str]
    registration_disabled: list[str]
    #: Left alone: their registration is pull-only, never pushed to.
    pull_only: list[str] = field(default_factory=list)


def queue_again(session: Session, delivery_ids: Sequence[str], *, now: datetime) -> Requeued:
    """Queue deliveries again now with a fresh retry schedule, if their registration is active.

    A delivery with an attempt under way (claimed, its lease running) is left alone: queuing it
    would let a second worker send it in parallel. So is one whose registration was deleted or
    is disabled: it would only fail again unsent; and one whose registration is pull-only.
    """
    if not delivery_ids:
        return Requeued([], [], [], [])
    queued = _queue_again_where(session, now, Delivery.id.in_(delivery_ids), not_claimed(now))
    left = sorted(set(delivery_ids) - set(queued))
    states: dict[str, str | None] = {}
    if left:
        rows = session.execute(
            select(Delivery.id, Registration.state, Registration.url.is_(None))
            .outerjoin(Registration, Registration.id == Delivery.registration_id)
            .where(Delivery.id.in_(left))
        )
        # A pull-only registration's deliveries are left alone for that, whatever its state (a
        # deleted one has no state, and a null URL in the outer join).
        states = {i: PULL_ONLY if pull and state else state for i, state, pull in rows}
    return Requeued(
        queued,
        in_flight=[i for i in left if states.get(i) == RegistrationState.ACTIVE],
        registration_deleted=[i for i in left if states.get(i) is None],
        registration_disabled=[i for i in left if states.get(i) == RegistrationState.DISABLED],
        pull_only=[i for i in left if states.get(i) == PULL_ONLY],
    )


def recover(
    session: Session,
    *,
    registration_id: str,
    since: datetime,
    until: datetime,
    statuses: Sequence[str],
    now: datetime,
) -> list[str]:
    """Queue again now, with a fresh retry schedule and the same ids, the registration's
    finished deliveries created in ``[since, until)`` whose status is one of ``statuses``
    (finished ones: no attempt of them can be under way), tests left out, while the
    registration is active and pushed to. One statement, however many match; the ids queued."""
    return _queue_again_where(
        session,
        now,
        Delivery.registration_id == registration_id,
        Delivery.created_at >= since,
        Delivery.created_at < until,
        Delivery.status.in_(statuses),
        Delivery.status != DeliveryStatus.PENDING,
        Delivery.mode != TEST_MODE,
    )


def _queue_again_where(session: Session, now: datetime, *where: Any) -> list[str]:
    """Queue again now, with a fresh retry schedule and the same ids, the deliveries that
    match ``where`` and whose registration is active and pushed to (a FIFO registration's in
    their turn); the ids queued."""
    active = select(Registration.id).where(
        Registration.state == RegistrationState.ACTIVE, Registration.url.is_not(None)
    )
    rows = session.execute(
        update(Delivery)
        .where(*where, Delivery.registration_id.in_(active))
        .values(
            status=DeliveryStatus.PENDING,
            retry_index=0,
            # A FIFO registration's wait their turn (see :mod:`.fifo`).
            next_attempt_at=case((Delivery.registration_id.in_(fifo.ORDERED), None), else_=now),
            claim_token=None,
            completed_at=None,
            updated_at=now,
            queued_at=now,
        )
        .returning(Delivery.id, Delivery.registration_id, Delivery.next_attempt_at)
        .execution_options(synchronize_session=False)
    ).all()
    for registration_id in sorted({row[1] for row in rows if row[2] is None}):
        fifo.sweep(session.connection(), now=now, registration_id=registration_id)
    return [row[0] for row in rows]


def redeliver(session: Session, *, owner: str, delivery_id: str, now: datetime) -> None:
    """Queue the owner's delivery again, now, with a fresh retry schedule and the same id;
    :class:`RegistrationDeleted` or :class:`RegistrationDisabled` when its registration is not
    active, :class:`PullOnlyRegistration` when it is pull-only, :class:`DeliveryInFlight` while
    an attempt of it is under way."""
    get_delivery(session, owner=owner, delivery_id=delivery_id)
    requeued = queue_again(session, [delivery_id], now=now)
    if requeued.registration_deleted:
        raise RegistrationDeleted()
    if requeued.pull_only:
        raise PullOnlyRegistration()
    if requeued.registration_disabled:
        raise RegistrationDisabled()
    if requeued.in_flight:
        raise DeliveryInFlight()
