"""The default engine: a pool of worker threads in the app process, fed after each commit and by
a poller that claims due work (retries, and whatever an earlier process left pending)."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from flask import Flask

from .. import store
from .attempt import deliver_claimed

if TYPE_CHECKING:
    from ..extension import WebhooksState

logger = logging.getLogger("flask_kaizen_webhooks")

#: A queue item: a delivery id, and the claim token if the poller already claimed it.
WorkItem = tuple[str, str | None]
_STOP: WorkItem = ("", None)


class ThreadDispatcher:
    """Delivers asynchronous webhooks from the outbox with ``settings.workers`` threads.

    The database is the source of truth: memory only holds ids about to be sent. Work found by
    the poller is claimed before it is queued, at most about two rounds of work at a time, so a
    claim's lease never runs out while it waits.
    """

    def __init__(self, app: Flask, state: WebhooksState) -> None:
        self._app = app
        self._state = state
        self._lock = threading.Lock()
        self._queue: queue.Queue[WorkItem] = queue.Queue(state.settings.max_queue)
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
            self._queue = queue.Queue(self._state.settings.max_queue)
            self._stopping = threading.Event()
            self._wake = threading.Event()
            self._pid = os.getpid()
            count = self._state.settings.workers
            self._threads = [
                threading.Thread(target=self._work, name=f"kaizen-webhooks-worker-{n}", daemon=True)
                for n in range(count)
            ]
            self._threads.append(
                threading.Thread(target=self._poll, name="kaizen-webhooks-poller", daemon=True)
            )
            for thread in self._threads:
                thread.start()
            atexit.register(self.stop)
        logger.info("Webhook dispatcher started with %d workers", count)

    def submit(self, delivery_ids: list[str]) -> None:
        """Hand committed deliveries to the workers (starting them on first use)."""
        self.autostart()
        if not self.running:
            return  # stopped: the rows wait in the outbox for the next start
        for delivery_id in delivery_ids:
            try:
                self._queue.put_nowait((delivery_id, None))
            except queue.Full:
                # Memory holds a bounded amount; the rest waits in the outbox for the poller.
                self.wake()
                return

    def wake(self) -> None:
        """Make the poller look for due work now."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, let attempts in flight finish (up to ``timeout`` seconds) and give
        back claimed work that was not started. Nothing pending is lost: it stays in the outbox.
        """
        with self._lock:
            self._closed = True
            if not self.running:
                return
            self._stopping.set()
            self._wake.set()
            threads, self._threads = self._threads, []
        self._drain_unclaimed()
        for _ in threads:
            self._queue.put(_STOP)
        for thread in threads:
            thread.join(timeout)
        self._release_unstarted()
        atexit.unregister(self.stop)
        logger.info("Webhook dispatcher stopped")

    # Threads -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item == _STOP or self._stopping.is_set():
                if item != _STOP:
                    self._queue.put(item)  # leave it for _release_unstarted
                return
            try:
                with self._app.app_context():
                    self._deliver(*item)
            except Exception:
                logger.exception("Delivery %s: unexpected error; it will be retried", item[0])

    def _deliver(self, delivery_id: str, token: str | None) -> None:
        state = self._state
        now = state.clock.now()
        lease_until = now + timedelta(seconds=state.settings.lease_seconds)
        with state.database.writing() as session:
            if token is None:
                token = str(uuid.uuid4())
                if not store.claim(
                    session, delivery_id=delivery_id, now=now, lease_until=lease_until, token=token
                ):
                    return  # not due yet, done already, or another worker has it
            elif not store.extend_claim(
                session, delivery_id=delivery_id, token=token, lease_until=lease_until
            ):
                return
        deliver_claimed(self._app, state, delivery_id, token)

    def _poll(self) -> None:
        settings = self._state.settings
        while not self._stopping.is_set():
            try:
                room = min(2 * settings.workers, settings.max_queue) - self._queue.qsize()
                if room > 0:
                    with self._app.app_context():
                        claimed, token = self._claim_due(room)
                    for delivery_id in claimed:
                        self._queue.put((delivery_id, token))
                    if len(claimed) == room:
                        continue  # more may be due: look again at once
            except Exception:
                logger.exception("Webhook poller: looking for due deliveries failed")
            self._wake.wait(settings.poll_interval)
            self._wake.clear()

    def _claim_due(self, limit: int) -> tuple[list[str], str]:
        state = self._state
        now = state.clock.now()
        token = str(uuid.uuid4())
        lease_until = now + timedelta(seconds=state.settings.lease_seconds)
        with state.database.writing() as session:
            claimed = store.claim_due(
                session, now=now, lease_until=lease_until, token=token, limit=limit
            )
        return claimed, token

    def _drain_unclaimed(self) -> None:
        """Drop queued ids nobody claimed yet (they stay pending in the outbox), keep claims."""
        kept: list[WorkItem] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item[1] is not None:
                kept.append(item)
        for item in kept:
            self._queue.put(item)

    def _release_unstarted(self) -> None:
        claimed: list[WorkItem] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item != _STOP and item[1] is not None:
                claimed.append(item)
        if not claimed:
            return
        state = self._state
        try:
            with (
                self._app.app_context(),
                state.database.independent_session() as session,
                session.begin(),
            ):
                for delivery_id, token in claimed:
                    assert token is not None
                    store.release_claim(
                        session, delivery_id=delivery_id, token=token, now=state.clock.now()
                    )
        except Exception:
            logger.exception(
                "Could not give back %d claimed deliveries; their leases will "
                "expire and they will be sent then",
                len(claimed),
            )
