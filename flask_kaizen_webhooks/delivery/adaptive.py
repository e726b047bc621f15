"""Each registration's attempts at once, adapted to how its receiver answers, within ``[1,
KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION]``: additive increase, multiplicative decrease,
as TCP sizes its window. A registration starts at one attempt at a time; each 2xx answered within
:data:`QUICK` seconds adds ``1 / limit`` (one more attempt at once per round of answers); a
timeout, a 5xx, a 429 or no answer at all halves it, once per round (the failures of attempts
that started before the last cut do not cut again). Other answers leave it as it is.

So a healthy receiver catching up on a backlog soon gets the whole cap, and a sick one costs a
slot or two. The limit is this process's: the caps shared across processes (see
:mod:`..storage.slots`) still bound the sum.
"""

from __future__ import annotations

import enum
import math
import threading
import time

from .transfer import SendResult

#: Attempts at once a registration starts with: one, until its receiver has answered well.
START = 1.0
#: Seconds within which a 2xx counts as quick.
QUICK = 1.0


class Verdict(enum.Enum):
    """What an answer says of its receiver's health."""

    GROW = "grow"
    HOLD = "hold"
    CUT = "cut"


def verdict_of(result: SendResult) -> Verdict:
    """How ``result`` moves its registration's limit."""
    if result.ok:
        return Verdict.GROW if result.elapsed <= QUICK else Verdict.HOLD
    code = result.status_code
    if result.timed_out or code is None or code >= 500 or code == 429:
        return Verdict.CUT
    return Verdict.HOLD


class Concurrency:
    """The adapted limits of one engine's registrations; thread-safe."""

    def __init__(self, cap: int, *, adaptive: bool) -> None:
        self.cap = cap
        self.adaptive = adaptive
        self._limits: dict[str, float] = {}
        #: When each registration's limit was last cut (``time.monotonic()``).
        self._cut_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def limit(self, registration_id: str) -> int:
        """The attempts ``registration_id`` may have under way at once, here."""
        if not self.adaptive:
            return self.cap
        return int(self._limits.get(registration_id, START))

    def observe(self, registration_id: str, verdict: Verdict, elapsed: float) -> bool:
        """Move the registration's limit by an answer that took ``elapsed`` seconds; True when
        it let one more attempt start."""
        if not self.adaptive or verdict is Verdict.HOLD:
            return False
        with self._lock:
            current = self._limits.get(registration_id, START)
            if verdict is Verdict.GROW:
                new = min(float(self.cap), current + 1 / current)
            else:
                now = time.monotonic()
                if now - elapsed < self._cut_at.get(registration_id, -math.inf):
                    return False  # started before the last cut: that round was cut already
                self._cut_at[registration_id] = now
                new = max(1.0, current / 2)
            if new == START:  # nothing to keep
                self._limits.pop(registration_id, None)
                self._cut_at.pop(registration_id, None)
            else:
                self._limits[registration_id] = new
            return int(new) > int(current)
