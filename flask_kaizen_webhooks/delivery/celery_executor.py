"""The Celery executor: asynchronous deliveries as tasks on the host's Celery workers, for hosts
that outgrow one process (``KAIZEN_WEBHOOKS_EXECUTOR = "celery"``; ``pip install
flask-kaizen-webhooks[celery]``).

The outbox stays the source of truth. A task carries the ids of the deliveries one commit made
(up to :data:`BATCH` of them): it claims those that are due (the same claim as the thread
engine's, so each attempt goes to one worker however many run), attempts them all at once on
the worker's client, records them in one transaction and, for each retry, sends a task for its
moment. A lost message, a dead worker or a broker restart only delays a delivery: the sweep task,
which Celery beat runs every ``KAIZEN_WEBHOOKS_CELERY_SWEEP_INTERVAL`` seconds, sends a task
again for every delivery overdue by more than that interval.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from datetime import timedelta
from typing import Any

from flask import Flask

from ..config import PREFIX
from ..errors import ConfigurationError
from ..storage import claims, outbox
from ..storage.holders import new_token
from ..storage.rows import Outcome
from .attempt import abandon, attempt_all, record
from .client import Client
from .context import DeliveryContext

logger = logging.getLogger("flask_kaizen_webhooks")

DELIVER = "flask_kaizen_webhooks.deliver"
SWEEP = "flask_kaizen_webhooks.sweep"
#: The most deliveries one task carries.
BATCH = 100
#: The most deliveries one sweep sends again.
SWEEP_LIMIT = 10_000


def celery_app_of(app: Flask) -> Any:
    """The host's Celery app, set up the way Flask's Celery pattern does it
    (``app.extensions["celery"]``)."""
    celery_app = app.extensions.get("celery")
    if celery_app is None:
        raise ConfigurationError(
            PREFIX + "EXECUTOR",
            '"celery" needs the app\'s Celery app in app.extensions["celery"] (Flask\'s '
            "celery_init_app pattern) before KaizenWebhooks(app) is set up",
        )
    return celery_app


class CeleryExecutor:
    """Hands committed deliveries to Celery; the host's Celery workers send them."""

    def __init__(self, app: Flask, context: DeliveryContext, client: Client) -> None:
        self._app = app
        self._context = context
        self._client = client
        self._lock = threading.Lock()
        self._outgoing: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._publisher: threading.Thread | None = None
        self._pid = os.getpid()
        celery_app = celery_app_of(app)

        def deliver(delivery_ids: list[str] | str) -> None:
            # A single id: a message published by an earlier release, still in the broker.
            self._deliver([delivery_ids] if isinstance(delivery_ids, str) else delivery_ids)

        def sweep() -> int:
            return self._sweep()

        self.deliver = celery_app.task(name=DELIVER, acks_late=True, ignore_result=True)(deliver)
        self.sweep = celery_app.task(name=SWEEP, ignore_result=True)(sweep)
        celery_app.conf.beat_schedule = {
            **(celery_app.conf.beat_schedule or {}),
            "flask-kaizen-webhooks-sweep": {
                "task": SWEEP,
                "schedule": context.settings.celery_sweep_interval,
            },
        }

    # The Executor protocol: the web process only hands ids over.

    def start(self) -> None:
        return None

    def autostart(self) -> None:
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """Hand over what is still waiting (for up to ``timeout`` seconds)."""
        with self._lock:
            publisher = self._publisher if self._pid == os.getpid() else None
            self._publisher = None
            if publisher is None or not publisher.is_alive():
                return
            self._outgoing.put(None)
        publisher.join(timeout)

    def after_fork(self) -> None:
        """In a forked child: a publishing thread of its own, on first use."""
        self._lock = threading.Lock()
        self._fresh()

    def _fresh(self) -> None:
        self._pid, self._outgoing, self._publisher = os.getpid(), queue.SimpleQueue(), None

    def submit(self, delivery_ids: list[str]) -> None:
        """One task for the deliveries just committed (one per :data:`BATCH` of them), sent by a
        thread of this process so that the host's request does not wait on the broker. A broker
        that cannot be reached, or a process that ends first, costs a delay, not a delivery: the
        sweep sends the task later."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child starts afresh
                self._fresh()
            for start in range(0, len(delivery_ids), BATCH):
                self._outgoing.put(delivery_ids[start : start + BATCH])
            if self._publisher is None or not self._publisher.is_alive():
                self._publisher = threading.Thread(
                    target=self._publish,
                    args=(self._outgoing,),
                    name="kaizen-webhooks-celery-publisher",
                    daemon=True,
                )
                self._publisher.start()

    def _publish(self, outgoing: queue.SimpleQueue[list[str] | None]) -> None:
        while True:
            delivery_ids = outgoing.get()
            if delivery_ids is None:
                return
            try:
                self.deliver.apply_async((delivery_ids,))
            except Exception:
                logger.exception(
                    "Deliveries %s: could not hand them to Celery; the sweep will",
                    ", ".join(delivery_ids),
                )

    # Tasks, run by the Celery workers.

    def _deliver(self, delivery_ids: list[str]) -> None:
        """Claim those of ``delivery_ids`` that are due, attempt them all at once and record
        them in one transaction; send a task for each retry, for its moment."""
        with self._app.app_context():
            context = self._context
            now = context.clock.now()
            lease_until = now + timedelta(seconds=context.settings.lease_seconds)
            with context.database.writing() as session:
                claimed = claims.claim_these(
                    session,
                    delivery_ids=delivery_ids,
                    now=now,
                    lease_until=lease_until,
                    token=new_token(),
                    fan_out_first=True,
                )
            for gone in [item for item in claimed if item.target is None]:
                abandon(self._app, context, gone)
            sendable = [item for item in claimed if item.target is not None]
            if not sendable:
                return  # sent already, not due yet, or another worker's
            done = attempt_all(context, self._client, sendable)
            record(self._app, context, done)
            for retry in done:
                if retry.kind is Outcome.RETRY and retry.retry_at is not None:
                    self.deliver.apply_async(([retry.delivery_id],), eta=retry.retry_at)

    def _sweep(self) -> int:
        """Fan out the events whose tasks were lost, and send a task again for every delivery
        overdue by more than the sweep interval."""
        with self._app.app_context():
            context = self._context
            due_before = context.clock.now() - timedelta(
                seconds=context.settings.celery_sweep_interval
            )
            with context.database.writing() as session:
                fanned = outbox.expand_events(session, limit=SWEEP_LIMIT)
                overdue = claims.overdue(session, due_before=due_before, limit=SWEEP_LIMIT)
            ids = list(dict.fromkeys(fanned + overdue))
            if ids:
                logger.warning("Sweep: %d overdue deliveries sent to Celery again", len(ids))
            self.submit(ids)
            return len(ids)
