"""FIFO registrations' waiting deliveries kept out of the claim query's way. A claim that meets
a delivery of a FIFO registration whose turn has not come sets it aside (pending, due at no
time), so no claim reads it again; when a delivery of the registration ends, the next one in
order is due at once. Deliveries queued again (redelivered, recovered) are set aside to wait
their turn the same way. A sweep makes due the next one of any FIFO registration whose pending
deliveries are all set aside (the end of one went unrecorded). The order itself is kept by the
claim query (see :mod:`.claims`): this only moves due times.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, case, literal_column, select, update

from .rows import DELIVERIES, REGISTRATIONS
from .tables import DeliveryStatus, Ordering, RegistrationState

#: ``'pending'`` written out, so that the statements match the index of pending deliveries.
PENDING: Any = literal_column(f"'{DeliveryStatus.PENDING}'")

#: The FIFO registrations.
ORDERED = select(REGISTRATIONS.c.id).where(REGISTRATIONS.c.ordering == Ordering.FIFO)


def set_aside_statement(waits: Any) -> Any:
    """Set aside the deliveries ``b_ids`` that are still due and still wait their turn by
    ``waits`` (checked again here, on what is committed now: another process may have ended
    the one they waited for, or made the registration unordered, since they were read); a
    lapsed claim's token goes with it."""
    return (
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id.in_(bindparam("b_ids", expanding=True)),
            DELIVERIES.c.status == PENDING,
            DELIVERIES.c.next_attempt_at <= bindparam("b_now"),
            waits,
        )
        .values(next_attempt_at=None, claim_token=None)
    )


def _first_waiting(registration: Any) -> Any:
    """The id of ``registration``'s first pending delivery, in the order made."""
    waiting = DELIVERIES.alias("waiting")
    return (
        select(waiting.c.id)
        .where(waiting.c.registration_id == registration, waiting.c.status == PENDING)
        .order_by(waiting.c.created_at, waiting.c.id)
        .limit(1)
        .scalar_subquery()
    )


# Not "WHERE next_attempt_at IS NULL": a claim setting the row aside at this moment holds
# its lock, and this statement waits for it (PostgreSQL), then sees the row set aside.
_NEXT = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.id == _first_waiting(bindparam("b_registration")),
        DELIVERIES.c.claim_token.is_(None),
    )
    .values(
        next_attempt_at=case(
            (DELIVERIES.c.next_attempt_at.is_(None), bindparam("b_now")),
            else_=DELIVERIES.c.next_attempt_at,
        )
    )
)


def _stuck(registration_filter: Any) -> Any:
    registrations = REGISTRATIONS.alias("fifo")
    moving = DELIVERIES.alias("moving")
    heads = select(_first_waiting(registrations.c.id)).where(
        registrations.c.ordering == Ordering.FIFO,
        registrations.c.state == RegistrationState.ACTIVE,
        registration_filter(registrations),
        ~select(moving.c.id)
        .where(
            moving.c.registration_id == registrations.c.id,
            moving.c.status == PENDING,
            moving.c.next_attempt_at.is_not(None),
        )
        .exists(),
    )
    return (
        update(DELIVERIES)
        .where(DELIVERIES.c.id.in_(heads), DELIVERIES.c.next_attempt_at.is_(None))
        .values(next_attempt_at=bindparam("b_now"))
    )


_STUCK = _stuck(lambda registrations: registrations.c.id.is_not(None))
_STUCK_ONE = _stuck(lambda registrations: registrations.c.id == bindparam("b_registration"))

# Set aside, of a registration that is FIFO no more (made unordered while a claim set them
# aside).
_LEFT_BEHIND = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.status == PENDING,
        DELIVERIES.c.next_attempt_at.is_(None),
        DELIVERIES.c.registration_id.not_in(ORDERED),
    )
    .values(next_attempt_at=bindparam("b_now"))
)

_LET_GO = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.registration_id == bindparam("b_registration"),
        DELIVERIES.c.status == PENDING,
        DELIVERIES.c.next_attempt_at.is_(None),
    )
    .values(next_attempt_at=bindparam("b_now"))
)


def next_one_due(connection: Connection, ended: Sequence[tuple[str, datetime]]) -> None:
    """For each (registration, now) one of whose deliveries ended: its first waiting delivery,
    if set aside, is due now."""
    if ended:
        connection.execute(
            _NEXT, [{"b_registration": registration, "b_now": now} for registration, now in ended]
        )


def sweep(connection: Connection, *, now: datetime, registration_id: str | None = None) -> None:
    """Make due now the first waiting delivery of each FIFO registration (or of the one given)
    whose pending deliveries are all set aside."""
    if registration_id is None:
        connection.execute(_STUCK, {"b_now": now})
        connection.execute(_LEFT_BEHIND, {"b_now": now})
    else:
        connection.execute(_STUCK_ONE, {"b_now": now, "b_registration": registration_id})


#: Seconds between the sweeps one process makes of one database, along its claims.
SWEEP_EVERY = 2.0
#: When this process sweeps each database next (``time.monotonic()``), by its engine.
_next_sweep: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def sweep_now_and_then(connection: Connection, *, now: datetime) -> None:
    """:func:`sweep`, at most every :data:`SWEEP_EVERY` seconds per database in this
    process."""
    if time.monotonic() >= _next_sweep.get(connection.engine, 0.0):
        _next_sweep[connection.engine] = time.monotonic() + SWEEP_EVERY
        sweep(connection, now=now)


def let_go(connection: Connection, *, registration_id: str, now: datetime) -> None:
    """The registration is no longer FIFO: its deliveries set aside are due now."""
    connection.execute(_LET_GO, {"b_registration": registration_id, "b_now": now})
