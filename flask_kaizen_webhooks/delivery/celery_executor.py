"""The Celery executor: asynchronous deliveries on the host's Celery workers, for hosts that
outgrow one process (``KAIZEN_WEBHOOKS_EXECUTOR = "celery"``; ``pip install
flask-kaizen-webhooks[celery]``).

A web process hands the deliveries of each commit to Celery as one task. A worker process runs
the same engine as the thread executor (:class:`.engine.ThreadExecutor`), started with the
worker process: a task wakes it, and it claims due work in batches, sends it on the process's one
client and records the results as they come. So a worker process spends its time sending, and
the caps on attempts in flight hold across every worker process (see
:mod:`..storage.slots`).

The outbox stays the source of truth. A lost message, a dead worker or a broker restart only
delays a delivery: every running engine looks for due work at each poll, and the sweep task,
which Celery beat runs every ``KAIZEN_WEBHOOKS_CELERY_SWEEP_INTERVAL`` seconds, sends a task
again for work overdue by more than that interval.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from datetime import timedelta
from typing import Any

from flask import Flask

from ..config import PREFIX
from ..errors import ConfigurationError
from ..storage import claims, outbox
from .client import Client
from .context import DeliveryContext
from .engine import ThreadExecutor
from .outage import Outage, unreachable

logger = logging.getLogger("flask_kaizen_webhooks")

#: The task carrying the ids of one commit's deliveries.
DELIVER_MANY = "flask_kaizen_webhooks.deliver_many"
#: The task of earlier releases (one id each): still taken, for messages queued before an
#: upgrade.
DELIVER = "flask_kaizen_webhooks.deliver"
SWEEP = "flask_kaizen_webhooks.sweep"
#: The most deliveries one sweep sends again.
SWEEP_LIMIT = 10_000
#: The most ids one task carries.
TASK_IDS = 1000
#: Seconds a worker process ending waits for its attempts under way.
SHUTDOWN_TIMEOUT = 10.0
#: Seconds between the tasks one web process sends while commits keep coming.
PUBLISH_EVERY = 0.05


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


def broker_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says Celery's broker could not be reached (restarting, its connections
    cut): an outage rather than a fault of ours."""
    from kombu.exceptions import OperationalError  # Celery's own transport library

    return isinstance(exc, OperationalError | OSError)


class CeleryExecutor:
    """Hands committed deliveries to Celery; in the host's Celery workers, the engine sends
    them."""

    def __init__(self, app: Flask, context: DeliveryContext, client: Client) -> None:
        self._app = app
        self._context = context
        #: The engine of a worker process, started with it.
        self.engine = ThreadExecutor(app, context, client)
        self._lock = threading.Lock()
        self._outgoing: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._publisher: threading.Thread | None = None
        self._broker = Outage(
            "Celery's broker", "the sweep sends their tasks later", expected=broker_unreachable
        )
        self._pid = os.getpid()
        celery_app = celery_app_of(app)

        def deliver_many(delivery_ids: list[str]) -> None:
            self._wake()

        def deliver(delivery_id: str) -> None:
            self._wake()

        def sweep() -> int:
            return self._sweep()

        self.deliver_many = celery_app.task(name=DELIVER_MANY, ignore_result=True)(deliver_many)
        self.deliver = celery_app.task(name=DELIVER, ignore_result=True)(deliver)
        self.sweep = celery_app.task(name=SWEEP, ignore_result=True)(sweep)
        self._start_with_workers(celery_app)
        celery_app.conf.beat_schedule = {
            **(celery_app.conf.beat_schedule or {}),
            "flask-kaizen-webhooks-sweep": {
                "task": SWEEP,
                "schedule": context.settings.celery_sweep_interval,
            },
        }

    def _start_with_workers(self, celery_app: Any) -> None:
        """Start the engine of each worker process as it starts (rather than on its first
        task), so that retries left due by a restart go out without waiting for new work; and
        stop it as the process ends, recording what is under way and giving back its claims
        and its shares of the caps."""
        from celery import signals

        def on_process_init(**_: Any) -> None:  # a prefork child, or the solo pool's process
            self.engine.autostart()

        def on_ready(sender: Any = None, **_: Any) -> None:  # the worker's main process
            if getattr(sender, "app", None) is not celery_app:
                return
            pool = type(getattr(sender, "pool", None)).__module__
            if not pool.endswith(".prefork"):  # prefork: the children send, not the parent
                self.engine.autostart()

        def on_shutdown(**_: Any) -> None:  # a prefork child ends with os._exit: no atexit
            self.engine.stop(SHUTDOWN_TIMEOUT)

        signals.worker_process_init.connect(on_process_init, weak=False)
        signals.worker_ready.connect(on_ready, weak=False)
        signals.worker_process_shutdown.connect(on_shutdown, weak=False)
        signals.worker_shutdown.connect(on_shutdown, weak=False)

    # The Executor protocol: the web process only hands ids over.

    def start(self) -> None:
        return None

    def autostart(self) -> None:
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """Hand over what is still waiting (for up to ``timeout`` seconds), and stop this
        process's engine if it runs (a worker process)."""
        with self._lock:
            publisher = self._publisher if self._pid == os.getpid() else None
            self._publisher = None
            if publisher is not None and publisher.is_alive():
                self._outgoing.put(None)
            else:
                publisher = None
        if publisher is not None:
            publisher.join(timeout)
        self.engine.stop(timeout)

    def state(self) -> str:
        """A worker process's engine; ``elsewhere`` in a web process (the workers send)."""
        return self.engine.state() if self.engine.running else "elsewhere"

    def after_fork(self) -> None:
        """In a forked child: a publishing thread and an engine of its own, on first use."""
        self._lock = threading.Lock()
        self._fresh()
        self.engine.after_fork()

    def _fresh(self) -> None:
        self._pid, self._outgoing, self._publisher = os.getpid(), queue.SimpleQueue(), None

    def submit(self, delivery_ids: list[str]) -> None:
        """One task for the deliveries just committed, sent by a thread of this process so
        that the host's request does not wait on the broker. A broker that cannot be reached,
        or a process that ends first, costs a delay, not a delivery: the engines find the work
        at their next poll, and the sweep sends the task later."""
        if not delivery_ids:
            return
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
        """Send what is queued as tasks: the first at once, then at most one every
        :data:`PUBLISH_EVERY` seconds carrying what came meanwhile. A task only wakes an
        engine, and a busy engine claims what is due without being woken, so a burst of
        commits costs a few tasks, not one each."""
        published = 0.0
        done = False
        while not done:
            first = outgoing.get()
            if first is None:
                return
            ids = [first]
            gather_until = published + PUBLISH_EVERY
            while len(ids) < TASK_IDS:
                try:
                    delivery_id = outgoing.get(timeout=max(0.0, gather_until - time.monotonic()))
                except queue.Empty:
                    break
                if delivery_id is None:
                    done = True
                    break
                ids.append(delivery_id)
            try:
                self.deliver_many.apply_async((ids,))
            except Exception as exc:
                self._broker.failed(exc, f"Handing {len(ids)} deliveries to Celery")
            else:
                self._broker.works()
            published = time.monotonic()

    # Tasks, run by the Celery workers.

    def _wake(self) -> None:
        """Make this worker process's engine look for due work now (starting it if it was not
        started with the process)."""
        self.engine.autostart()
        self.engine.wake()

    def _sweep(self) -> int:
        """Fan out the events whose tasks were lost, and send a task again for every delivery
        overdue by more than the sweep interval. While the database cannot be reached, the
        engine's outage tells of it (not a traceback a sweep) and the next sweep tries again."""
        with self._app.app_context():
            context = self._context
            due_before = context.clock.now() - timedelta(
                seconds=context.settings.celery_sweep_interval
            )
            outage = self.engine.database_outage
            try:
                with context.database.writing() as session:
                    fanned = outbox.expand_events(
                        session, now=context.clock.now(), limit=SWEEP_LIMIT
                    )
                    overdue = claims.overdue(session, due_before=due_before, limit=SWEEP_LIMIT)
            except Exception as exc:
                if not unreachable(exc):
                    raise
                outage.failed(exc, "Sweeping the outbox")
                return 0
            outage.works()
            ids = list(dict.fromkeys(fanned + overdue))
            if ids:
                logger.warning("Sweep: %d overdue deliveries sent to Celery again", len(ids))
            self.submit(ids)
            return len(ids)
