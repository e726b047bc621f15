"""Time: the engines' clock (tests replace it to control retries) and the one rule for the
times the database hands back."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import overload


class Clock:
    """Wall-clock time, as epoch seconds and as an aware UTC datetime."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def now(self) -> datetime:
        """The current moment in UTC."""
        return datetime.fromtimestamp(self.time(), UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` made timezone-aware: a naive time (SQLite hands those back, and people type
    them) is taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@overload
def isoformat(moment: datetime) -> str: ...
@overload
def isoformat(moment: None) -> None: ...
def isoformat(moment: datetime | None) -> str | None:
    """``moment`` as ISO 8601 in UTC with a ``Z``."""
    if moment is None:
        return None
    return as_utc(moment).isoformat().replace("+00:00", "Z")
