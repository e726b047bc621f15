"""The default engine: a pool of worker threads in the app process, fed by a poller that claims
due work in batches (new deliveries, woken by each commit; retries; whatever an earlier process
left pending) and loads it in the same transaction."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Flask

from .. import store
from .attempt import abandon, attempt, record
from .inflight import InFlight
from .recorder import Recorder

if TYPE_CHECKING:
    from ..extension import WebhooksState

logger = logging.getLogger("flask_kaizen_webhooks")

#: A queue item: a claimed delivery ready to go, with its destination host when a slot is held
#: for it (None: its registration is gone, it is only to be abandoned); or None to stop a worker.
WorkItem = tuple[store.Claimed, str | None] | None


#: Seconds of lease an attempt needs beyond its own time limits, or the lease is renewed first.
LEASE_MARGIN = 5.0
#: Deliveries claimed ahead in one round (at least two per worker): one short transaction
#: loads work for many attempts.
CLAIM_AHEAD = 64


class ThreadDispatcher:
    """Delivers asynchronous webhooks from the outbox with ``settings.workers`` threads.

    The database is the source of truth: memory only holds claimed work about to be sent (at
    most about two rounds of it, plus work parked behind a busy registration or host) and
    attempts about to be recorded. Attempts are recorded in batches by one thread.
    """

    def __init__(self, app: Flask, state: WebhooksState) -> None:
        self._app = app
        self._state = state
        settings = state.settings
        self._ahead = min(max(2 * settings.workers, CLAIM_AHEAD), settings.max_queue)
        self._in_flight: InFlight[store.Claimed] = InFlight(
            settings.max_in_flight_per_registration,
            settings.max_in_flight_per_host,
            park_per_host=self._ahead,
            park_total=settings.max_queue,
        )
        self._recorder: Recorder[store.AttemptRecord] = Recorder(
            self._record, name="kaizen-webhooks-recorder", expecting=self._in_flight.busy
        )
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[WorkItem] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._pid: int | None = None
        self._closed = False  # stopped on purpose: only an explicit start() resumes

    @property
    def running(self) -> bool:
        """True while the threads of this process run."""
        return self._pid == os.getpid() and not self._stopping.is_set()

    def autostart(self) -> None:
        """Start on first use (a request, a submission), unless stopped on purpose."""
        if not self._closed and not self.running:
            self.start()

    def start(self) -> None:
        """Start the threads (again, in a forked child); a no-op while they run."""
        with self._lock:
            self._closed = False
            if self.running:
                return
            # Fresh queue and events: threads of an earlier run that did not stop in time keep
            # their own, and end without touching these.
            work: queue.SimpleQueue[WorkItem] = queue.SimpleQueue()
            stopping, wake = threading.Event(), threading.Event()
            self._queue, self._stopping, self._wake = work, stopping, wake
            self._pid = os.getpid()
            count = self._state.settings.workers
            self._threads = [
                threading.Thread(
                    target=self._work,
                    args=(work, stopping, wake),
                    name=f"kaizen-webhooks-worker-{n}",
                    daemon=True,
                )
                for n in range(count)
            ]
            self._threads.append(
                threading.Thread(
                    target=self._poll,
                    args=(work, stopping, wake),
                    name="kaizen-webhooks-poller",
                    daemon=True,
                )
            )
            for thread in self._threads:
                thread.start()
            atexit.register(self.stop)
        logger.info("Webhook dispatcher started with %d workers", count)

    def submit(self, delivery_ids: list[str]) -> None:
        """Deliveries were committed: the poller claims them at once (starting on first use).
        Stopped, the rows wait in the outbox for the next start."""
        self.autostart()
        if delivery_ids and self.running:
            self.wake()

    def wake(self) -> None:
        """Make the poller look for due work now."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, let attempts in flight finish (up to ``timeout`` seconds), record
        them, and give back claimed work that was not started. Nothing pending is lost: it stays
        in the outbox."""
        with self._lock:
            self._closed = True
            if not self.running:
                return
            self._stopping.set()
            self._wake.set()
            threads, self._threads = self._threads, []
            work = self._queue
        for _ in threads:
            work.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._give_back(self._unstarted(work), due=self._state.clock.now())
        self._recorder.stop(max(1.0, deadline - time.monotonic()))
        atexit.unregister(self.stop)
        logger.info("Webhook dispatcher stopped")

    # Threads -------------------------------------------------------------------------------

    def _work(
        self, work: queue.SimpleQueue[WorkItem], stopping: threading.Event, wake: threading.Event
    ) -> None:
        while True:
            item = work.get()
            if item is None or stopping.is_set():
                if item is not None:
                    work.put(item)  # left for _unstarted
                return
            claimed, host = item
            with self._app.app_context():
                if host is None:
                    self._abandon(claimed)
                else:
                    self._run_slot(claimed, host, work, stopping, wake)

    def _run_slot(
        self,
        item: store.Claimed,
        host: str,
        work: queue.SimpleQueue[WorkItem],
        stopping: threading.Event,
        wake: threading.Event,
    ) -> None:
        """Attempt ``item``, whose slot is held, then whatever was parked behind that slot,
        until none is left; the poller is woken when the work in memory runs low."""
        current: store.Claimed | None = item
        while current is not None:
            try:
                if stopping.is_set():
                    self._give_back([current], due=self._state.clock.now())
                else:
                    self._attempt(current)
            except Exception:
                logger.exception(
                    "Delivery %s: unexpected error; it will be retried", current.delivery_id
                )
            finally:
                following = self._in_flight.release(current.registration_id, host)
            current = following
            if work.qsize() + self._in_flight.parked < self._ahead // 2 and not wake.is_set():
                wake.set()  # running low: the poller claims the next round now

    def _abandon(self, item: store.Claimed) -> None:
        try:
            abandon(self._app, self._state, item)
        except Exception:
            logger.exception("Delivery %s: unexpected error; it will be retried", item.delivery_id)

    def _dispatch(self, claimed: list[store.Claimed], work: queue.SimpleQueue[WorkItem]) -> None:
        """Queue what may start now (its slot taken), park what must wait for a busy
        registration or host, and give back what does not fit in memory: workers are woken only
        for work they can start."""
        refused = []
        for item in claimed:
            if item.target is None:
                work.put((item, None))
                continue
            host = (urlsplit(item.target.url).hostname or "").lower()
            taken = self._in_flight.acquire(item.registration_id, host, item)
            if taken:
                work.put((item, host))
            elif taken is False:
                refused.append(item)
        if refused:
            # Too much is already waiting for this host: back to the outbox for a while.
            state = self._state
            later = state.clock.now() + timedelta(seconds=state.settings.poll_interval)
            self._give_back(refused, due=later)

    def _attempt(self, item: store.Claimed) -> None:
        """Attempt a claimed delivery whose slot is held, and queue its record."""
        state = self._state
        settings = state.settings
        now = state.clock.now()
        needed = settings.async_timeout + settings.connect_timeout + LEASE_MARGIN
        if (item.lease_until - now).total_seconds() < needed:
            # It waited long in memory: renew the lease so that no other worker takes it over
            # while this attempt runs, or leave it if another worker already has.
            with state.database.writing() as session:
                renewed = store.extend_claim(
                    session,
                    delivery_id=item.delivery_id,
                    token=item.token,
                    lease_until=now + timedelta(seconds=settings.lease_seconds),
                )
            if not renewed:
                logger.info("Delivery %s: claim expired before its attempt", item.delivery_id)
                return
        self._recorder.put(attempt(state, item))

    def _record(self, records: Sequence[store.AttemptRecord]) -> None:
        with self._app.app_context():
            record(self._app, self._state, records)

    def _poll(
        self, work: queue.SimpleQueue[WorkItem], stopping: threading.Event, wake: threading.Event
    ) -> None:
        settings = self._state.settings
        while not stopping.is_set():
            try:
                backlog = self._in_flight.backlog()
                room = self._ahead - work.qsize() - backlog.waiting
                if room > 0:
                    with self._app.app_context():
                        claimed = self._claim_due(room, backlog.skip_registrations)
                    self._dispatch(claimed, work)
                    if len(claimed) == room:
                        continue  # more may be due: look again at once
            except Exception:
                logger.exception("Webhook poller: looking for due deliveries failed")
            wake.wait(settings.poll_interval)
            wake.clear()

    def _claim_due(self, limit: int, skip_registrations: AbstractSet[str]) -> list[store.Claimed]:
        state = self._state
        now = state.clock.now()
        token = str(uuid.uuid4())
        lease_until = now + timedelta(seconds=state.settings.lease_seconds)
        with state.database.writing() as session:
            return store.claim_due(
                session,
                now=now,
                lease_until=lease_until,
                token=token,
                limit=limit,
                skip_registrations=skip_registrations,
            )

    def _unstarted(self, work: queue.SimpleQueue[WorkItem]) -> list[store.Claimed]:
        """Everything claimed and not started: parked, and queued (their slots given back)."""
        claimed = self._in_flight.unpark_all()
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                return claimed
            if item is not None:
                queued, host = item
                if host is not None:
                    self._in_flight.release(queued.registration_id, host)
                claimed.append(queued)

    def _give_back(self, items: list[store.Claimed], *, due: datetime) -> None:
        """Release the claims of ``items`` unattempted, due at ``due``."""
        if not items:
            return
        try:
            with self._app.app_context(), self._state.database.writing() as session:
                store.release_claims(
                    session, [(item.delivery_id, item.token) for item in items], due=due
                )
        except Exception:
            logger.exception(
                "Could not give back %d claimed deliveries; their leases will "
                "expire and they will be sent then",
                len(items),
            )
