"""The Celery executor: asynchronous deliveries as tasks on the host's Celery workers, for hosts
that outgrow one process (``KAIZEN_WEBHOOKS_EXECUTOR = "celery"``; ``pip install
flask-kaizen-webhooks[celery]``).

The outbox stays the source of truth. A task carries only a delivery id: it claims that
delivery (the same claim as the thread pool's, so each attempt goes to one worker however many
run), attempts it, records the attempt and, when a retry is due, sends itself again for that
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
from .attempt import abandon, attempt, record
from .client import Client
from .context import DeliveryContext

logger = logging.getLogger("flask_kaizen_webhooks")

DELIVER = "flask_kaizen_webhooks.deliver"
SWEEP = "flask_kaizen_webhooks.sweep"
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
        self._outgoing: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._publisher: threading.Thread | None = None
        self._pid = os.getpid()
        celery_app = celery_app_of(app)

        def deliver(delivery_id: str) -> None:
            self._deliver(delivery_id)

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
        """One task per delivery just committed, sent by a thread of this process so that the
        host's request does not wait on the broker. A broker that cannot be reached, or a process
        that ends first, costs a delay, not a delivery: the sweep sends the task later."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child starts afresh
                self._fresh()
            for delivery_id in delivery_ids:
                self._outgoing.put(delivery_id)
            if self._publisher is None or not self._publisher.is_alive():
                self._publisher = threading.Thread(
                    target=self._publish,
                    args=(self._outgoing,),
                    name="kaizen-webhooks-celery-publisher",
                    daemon=True,
                )
                self._publisher.start()

    def _publish(self, outgoing: queue.SimpleQueue[str | None]) -> None:
        while True:
            delivery_id = outgoing.get()
            if delivery_id is None:
                return
            try:
                self.deliver.apply_async((delivery_id,))
            except Exception:
                logger.exception(
                    "Delivery %s: could not hand it to Celery; the sweep will", delivery_id
                )

    # Tasks, run by the Celery workers.

    def _deliver(self, delivery_id: str) -> None:
        """Claim ``delivery_id``, attempt it and record the attempt; schedule the retry."""
        with self._app.app_context():
            context = self._context
            now = context.clock.now()
            lease_until = now + timedelta(seconds=context.settings.lease_seconds)
            with context.database.writing() as session:
                claimed = claims.claim_one(
                    session,
                    delivery_id=delivery_id,
                    now=now,
                    lease_until=lease_until,
                    token=new_token(),
                    fan_out_first=True,
                )
            if claimed is None:
                return  # sent already, not due yet, or another worker's
            if claimed.target is None:
                abandon(self._app, context, claimed)
                return
            done = attempt(context, self._client, claimed)
            record(self._app, context, [done])
            if done.kind is Outcome.RETRY and done.retry_at is not None:
                self.deliver.apply_async((delivery_id,), eta=done.retry_at)

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
