"""FIFO registrations' waiting deliveries kept out of the claim query's way: while one of a
FIFO registration's deliveries is being sent or waits for its retry, the others are due no
earlier than it may end (its lease, or its retry), and when it ends the next one is due at
once. So a long backlog behind a failing FIFO registration is not read again by every claim,
of every registration. The order itself is kept by the claim query (see :mod:`.claims`): this
only moves due times.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, literal_column, select, update

from .rows import DELIVERIES
from .tables import DeliveryStatus

#: ``'pending'`` written out, so that the statements match the index of pending deliveries.
PENDING: Any = literal_column(f"'{DeliveryStatus.PENDING}'")

_HOLD = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.registration_id == bindparam("b_registration"),
        DELIVERIES.c.status == PENDING,
        DELIVERIES.c.claim_token.is_(None),
        DELIVERIES.c.id != bindparam("b_head"),
        DELIVERIES.c.next_attempt_at < bindparam("b_until"),
    )
    .values(next_attempt_at=bindparam("b_until"))
)

_WAITING = DELIVERIES.alias("waiting")
_NEXT = (
    update(DELIVERIES)
    .where(
        DELIVERIES.c.id
        == select(_WAITING.c.id)
        .where(
            _WAITING.c.registration_id == bindparam("b_registration"),
            _WAITING.c.status == PENDING,
            _WAITING.c.claim_token.is_(None),
        )
        .order_by(_WAITING.c.created_at, _WAITING.c.id)
        .limit(1)
        .scalar_subquery(),
        DELIVERIES.c.next_attempt_at > bindparam("b_now"),
    )
    .values(next_attempt_at=bindparam("b_now"))
)


def hold_back(connection: Connection, holds: Sequence[tuple[str, str, datetime]]) -> None:
    """For each (registration, delivery, until): the registration's other waiting deliveries
    are due at ``until`` at the earliest (the delivery is being sent until then, or retried
    then)."""
    if holds:
        connection.execute(
            _HOLD,
            [
                {"b_registration": registration, "b_head": head, "b_until": until}
                for registration, head, until in holds
            ],
        )


def next_one_due(connection: Connection, ended: Sequence[tuple[str, datetime]]) -> None:
    """For each (registration, now) whose delivery ended: its next waiting delivery is due
    now."""
    if ended:
        connection.execute(
            _NEXT, [{"b_registration": registration, "b_now": now} for registration, now in ended]
        )
