"""The default engine: a pool of worker threads in the app process, fed by a poller that claims
due work in batches (new deliveries, woken by each commit; retries; whatever an earlier process
left pending) and loads it in the same transaction."""

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
from .attempt import deliver

if TYPE_CHECKING:
    from ..extension import WebhooksState

logger = logging.getLogger("flask_kaizen_webhooks")

#: A queue item: a claimed, loaded delivery, or None to stop a worker.
WorkItem = store.Claimed | None


class ThreadDispatcher:
    """Delivers asynchronous webhooks from the outbox with ``settings.workers`` threads.

    The database is the source of truth: memory only holds claimed work about to be sent, at
    most about two rounds of it, so a claim's lease never runs out while it waits.
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
        """Deliveries were committed: the poller claims them at once (starting on first use).
        Stopped, the rows wait in the outbox for the next start."""
        self.autostart()
        if delivery_ids and self.running:
            self.wake()

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
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join(timeout)
        self._release_unstarted()
        atexit.unregister(self.stop)
        logger.info("Webhook dispatcher stopped")

    # Threads -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if self._queue.qsize() < self._state.settings.workers:
                self._wake.set()  # running low: the poller claims the next round now
            if item is None or self._stopping.is_set():
                if item is not None:
                    self._queue.put(item)  # left for _release_unstarted
                return
            try:
                with self._app.app_context():
                    deliver(self._app, self._state, item)
            except Exception:
                logger.exception(
                    "Delivery %s: unexpected error; it will be retried", item.delivery_id
                )

    def _poll(self) -> None:
        settings = self._state.settings
        while not self._stopping.is_set():
            try:
                room = min(2 * settings.workers, settings.max_queue) - self._queue.qsize()
                if room > 0:
                    with self._app.app_context():
                        claimed = self._claim_due(room)
                    for item in claimed:
                        self._queue.put(item)
                    if len(claimed) == room:
                        continue  # more may be due: look again at once
            except Exception:
                logger.exception("Webhook poller: looking for due deliveries failed")
            self._wake.wait(settings.poll_interval)
            self._wake.clear()

    def _claim_due(self, limit: int) -> list[store.Claimed]:
        state = self._state
        now = state.clock.now()
        token = str(uuid.uuid4())
        lease_until = now + timedelta(seconds=state.settings.lease_seconds)
        with state.database.writing() as session:
            ids = store.claim_due(
                session, now=now, lease_until=lease_until, token=token, limit=limit
            )
            return store.load_claimed(session, ids=ids, token=token)

    def _release_unstarted(self) -> None:
        claimed: list[store.Claimed] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
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
                for item in claimed:
                    store.release_claim(
                        session,
                        delivery_id=item.delivery_id,
                        token=item.token,
                        now=state.clock.now(),
                    )
        except Exception:
            logger.exception(
                "Could not give back %d claimed deliveries; their leases will "
                "expire and they will be sent then",
                len(claimed),
            )
