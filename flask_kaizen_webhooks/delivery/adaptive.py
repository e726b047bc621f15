"""Each registration's attempts at once, adapted to how its receiver answers, within ``[1,
KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION]``: additive increase, multiplicative decrease,
as TCP sizes its window. A registration starts at one attempt at a time. Each 2xx answered
quickly adds ``1 / limit`` (one more attempt at once per round of answers); quickly means within
twice its usual time (or 50 ms more, for receivers that answer in a few milliseconds): the time
of its fastest answer, which drifts up by 5% an answer so that it follows a receiver that got
slower for good. A 2xx slower than that leaves the limit as it is: the receiver slows down as
more attempts reach it. A timeout, a 5xx, a 429 or no answer at all halves the limit, once per
round (the failures of attempts that started before the last cut do not cut again), and its
usual time is measured afresh. Other answers leave it as it is.

So a healthy receiver catching up on a backlog soon gets the whole cap, however long each answer
takes, and a sick one costs one slot. The limit is this process's: the caps shared across
processes (see :mod:`..storage.slots`) still bound the sum.
"""

from __future__ import annotations

import enum
import math
import threading
import time

from .transfer import SendResult

#: Attempts at once a registration starts with: one, until its receiver has answered well.
START = 1.0
#: A 2xx is quick within this many times its registration's usual time...
SLOWER = 2.0
#: ... or this many seconds more.
SLACK = 0.05
#: How much a registration's usual time drifts up with each answer.
DRIFT = 1.05


class Verdict(enum.Enum):
    """What an answer says of its receiver's health."""

    GROW = "grow"
    HOLD = "hold"
    CUT = "cut"


def verdict_of(result: SendResult) -> Verdict:
    """How ``result`` moves its registration's limit."""
    if result.ok:
        return Verdict.GROW  # if quick (see :meth:`Concurrency.observe`)
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
        #: Each registration's usual time to answer 2xx.
        self._usual: dict[str, float] = {}
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
                usual = min(self._usual.get(registration_id, elapsed) * DRIFT, elapsed)
                self._usual[registration_id] = usual
                if elapsed > max(SLOWER * usual, usual + SLACK):
                    return False  # slower than usual: more at once would not help it
                new = min(float(self.cap), current + 1 / current)
            else:
                now = time.monotonic()
                if now - elapsed < self._cut_at.get(registration_id, -math.inf):
                    return False  # started before the last cut: that round was cut already
                self._cut_at[registration_id] = now
                self._usual.pop(registration_id, None)
                new = max(1.0, current / 2)
            self._limits[registration_id] = new
            return int(new) > int(current)
