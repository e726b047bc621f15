"""One engine's pacing of rate-limited registrations (``max_per_second``, or the operator's
``KAIZEN_WEBHOOKS_DEFAULT_MAX_PER_SECOND``): their attempts wait here, their slots held, for
start times reserved across processes (see :mod:`..storage.pacing`), and are started at them by
a thread of the pacer's own, started when the first such attempt comes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Generic, TypeVar

from flask import Flask

from ..storage import pacing
from .context import DeliveryContext
from .outage import Outage

logger = logging.getLogger("flask_kaizen_webhooks")

T = TypeVar("T")

#: Seconds ahead a process reserves start times: what it may lose if it dies.
HORIZON = 1.0
#: Seconds before asking again when no start time could be reserved.
RETRY = 0.05

#: Starts an item at its time: the item, its host and the ``time.monotonic()`` it must start by.
Start = Callable[[T, str, float], None]


class Pacer(Generic[T]):
    """Holds the attempts of rate-limited registrations until their reserved start times."""

    def __init__(
        self, app: Flask, context: DeliveryContext, start: Start[T], outage: Outage
    ) -> None:
        self._app = app
        self._context = context
        self._start = start
        self._outage = outage
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        #: Waiting items by registration, oldest first, with their host and rate.
        self._waiting: dict[str, deque[tuple[T, str]]] = {}
        self._rates: dict[str, int] = {}
        #: Start times reserved, by registration, as ``time.monotonic()``, earliest first.
        self._times: dict[str, deque[float]] = {}
        self._thread: threading.Thread | None = None

    def put(self, registration_id: str, per_second: int, item: T, host: str) -> None:
        """Start ``item`` at the next start time reserved for its registration."""
        with self._lock:
            self._waiting.setdefault(registration_id, deque()).append((item, host))
            if per_second < self._rates.get(registration_id, per_second):
                self._times.pop(registration_id, None)  # reserved at the faster rate
            self._rates[registration_id] = per_second
            if self._thread is None:
                # A stopping event per thread: one that was told to stop never runs on.
                self._stopping = threading.Event()
                self._thread = threading.Thread(
                    target=self._run,
                    args=(self._stopping,),
                    name="kaizen-webhooks-pacer",
                    daemon=True,
                )
                self._thread.start()
        self._wake.set()

    def take_all(self) -> list[tuple[T, str]]:
        """Stop, and hand back every waiting item with its host (to free their slots)."""
        with self._lock:
            self._stopping.set()
            self._thread = None
            items = [entry for queue in self._waiting.values() for entry in queue]
            self._waiting.clear()
            self._times.clear()
        self._wake.set()
        return items

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                wait = self._turn()
            except Exception:  # a defect: the items wait for the next turn
                logger.exception("Webhook pacer: unexpected error")
                wait = RETRY
            self._wake.wait(wait)
            self._wake.clear()

    def _turn(self) -> float:
        """Start what is due, reserve start times for the rest; seconds until the next turn."""
        due, wanted = self._due()
        for item, host, start_by in due:
            self._start(item, host, start_by)
        if wanted:
            self._reserve(wanted)
        with self._lock:
            times = [queue[0] for queue in self._times.values() if queue]
            short = any(
                len(self._times.get(key, ())) < len(queue) for key, queue in self._waiting.items()
            )
        now = time.monotonic()
        wait = min((t - now for t in times), default=HORIZON)
        return max(0.0, min(wait, RETRY if short else HORIZON))

    def _due(self) -> tuple[list[tuple[T, str, float]], dict[str, int]]:
        """The items whose start time has come (with the time they must start by), and how
        many more start times each registration needs; times gone by unused are dropped."""
        now = time.monotonic()
        due: list[tuple[T, str, float]] = []
        wanted: dict[str, int] = {}
        with self._lock:
            for registration_id, queue in list(self._waiting.items()):
                times = self._times.setdefault(registration_id, deque())
                while times and times[0] + pacing.SLACK < now:
                    times.popleft()  # too late to start under it
                while queue and times and times[0] <= now:
                    item, host = queue.popleft()
                    due.append((item, host, times.popleft() + pacing.SLACK))
                if not queue:
                    del self._waiting[registration_id]
                elif len(times) < len(queue):
                    wanted[registration_id] = len(queue) - len(times)
            for registration_id in list(self._times):
                if registration_id not in self._waiting and not self._times[registration_id]:
                    del self._times[registration_id]
        return due, wanted

    def _reserve(self, wanted: dict[str, int]) -> None:
        """Reserve start times for ``wanted`` (by registration), up to :data:`HORIZON` ahead."""
        context = self._context
        now = context.clock.now()
        monotonic = time.monotonic()
        reserved: dict[str, list[float]] = {}
        with self._lock:  # the rates reserved at: times of a rate changed meanwhile are dropped
            rates = {key: self._rates[key] for key in wanted}
        try:
            with self._app.app_context(), context.database.writing() as session:
                for registration_id, count in wanted.items():
                    moments = pacing.reserve(
                        session,
                        registration_id=registration_id,
                        per_second=rates[registration_id],
                        count=count,
                        now=now,
                        horizon=now + timedelta(seconds=HORIZON),
                    )
                    reserved[registration_id] = [
                        monotonic + (moment - now).total_seconds() for moment in moments
                    ]
        except Exception as exc:
            self._outage.failed(exc, "Reserving start times of rate-limited registrations")
            return
        with self._lock:
            for registration_id, times in reserved.items():
                if (
                    registration_id in self._waiting
                    and self._rates.get(registration_id) == rates[registration_id]
                ):
                    self._times.setdefault(registration_id, deque()).extend(times)
