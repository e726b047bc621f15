"""The time source of the delivery engines; tests replace it to control retries."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall-clock time, as epoch seconds and as an aware UTC datetime."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def now(self) -> datetime:
        """The current moment in UTC."""
        return datetime.fromtimestamp(self.time(), UTC)
