"""Rates held across processes: a registration with a ``max_per_second`` keeps, in its row, the
earliest time its next attempt may start (``paced_until``). A process reserves start times from
it, evenly spaced, with one compare-and-set: no lock, no row of its own, and two processes never
get the same times.

Starts are spaced :data:`SPACING` over ``1 / max_per_second`` seconds apart, and a start time
not used within :data:`SLACK` seconds is dropped (see :mod:`..delivery.pacer`): so any second
holds at most ``max_per_second`` starts, even counting a start up to :data:`SLACK` late and a
little more time on the way to the receiver. A time reserved and not used is lost, never
given twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..clock import as_utc
from .tables import Registration

#: How much wider than ``1 / max_per_second`` the gap between two starts is.
SPACING = 1.1
#: Seconds a start may come after its time; later, its time is dropped.
SLACK = 0.04
#: Compare-and-set rounds before giving up for now (others reserve at the same moment).
TRIES = 5


def gap(per_second: int) -> timedelta:
    """The time between two starts at ``per_second``."""
    return timedelta(seconds=SPACING / per_second)


def reserve(
    session: Session,
    *,
    registration_id: str,
    per_second: int,
    count: int,
    now: datetime,
    horizon: datetime,
) -> list[datetime]:
    """Up to ``count`` start times for the registration's attempts, :func:`gap` apart, none
    before ``now`` nor after ``horizon``; fewer (or none) when others hold the times up to
    ``horizon``, or the registration is gone."""
    step = gap(per_second)
    for _ in range(TRIES):
        row = session.execute(
            select(Registration.paced_until).where(Registration.id == registration_id)
        ).one_or_none()
        if row is None:
            return []
        stored = row[0]
        first = max(now, as_utc(stored)) if stored is not None else now
        if first > horizon:
            return []
        n = min(count, int((horizon - first) / step) + 1)
        same = (
            Registration.paced_until.is_(None)
            if stored is None
            else Registration.paced_until == stored
        )
        taken = session.execute(
            update(Registration)
            .where(Registration.id == registration_id, same)
            .values(paced_until=first + n * step)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return [first + i * step for i in range(n)]
    return []
