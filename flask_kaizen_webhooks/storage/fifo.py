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
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, literal_column, select, update

from .rows import DELIVERIES, REGISTRATIONS
from .tables import DeliveryStatus, Ordering

#: ``'pending'`` written out, so that the statements match the index of pending deliveries.
PENDING: Any = literal_column(f"'{DeliveryStatus.PENDING}'")

#: The FIFO registrations.
ORDERED = select(REGISTRATIONS.c.id).where(REGISTRATIONS.c.ordering == Ordering.FIFO)

_SET_ASIDE = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(next_attempt_at=None)
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


_NEXT = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.id == _first_waiting(bindparam("b_registration")),
        DELIVERIES.c.next_attempt_at.is_(None),
    )
    .values(next_attempt_at=bindparam("b_now"))
)


def _stuck(registration_filter: Any) -> Any:
    registrations = REGISTRATIONS.alias("fifo")
    moving = DELIVERIES.alias("moving")
    heads = select(_first_waiting(registrations.c.id)).where(
        registrations.c.ordering == Ordering.FIFO,
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

_LET_GO = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.registration_id == bindparam("b_registration"),
        DELIVERIES.c.status == PENDING,
        DELIVERIES.c.next_attempt_at.is_(None),
    )
    .values(next_attempt_at=bindparam("b_now"))
)


def set_aside(connection: Connection, delivery_ids: Sequence[str]) -> None:
    """Deliveries (locked by the caller) that wait their turn: due at no time for now."""
    if delivery_ids:
        connection.execute(_SET_ASIDE, {"b_ids": list(delivery_ids)})


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
    else:
        connection.execute(_STUCK_ONE, {"b_now": now, "b_registration": registration_id})


#: Seconds between the sweeps one process makes along its claims.
SWEEP_EVERY = 2.0
_next_sweep = [0.0]


def sweep_now_and_then(connection: Connection, *, now: datetime) -> None:
    """:func:`sweep`, at most every :data:`SWEEP_EVERY` seconds in this process."""
    if time.monotonic() >= _next_sweep[0]:
        _next_sweep[0] = time.monotonic() + SWEEP_EVERY
        sweep(connection, now=now)


def let_go(connection: Connection, *, registration_id: str, now: datetime) -> None:
    """The registration is no longer FIFO: its deliveries set aside are due now."""
    connection.execute(_LET_GO, {"b_registration": registration_id, "b_now": now})
