"""The default engine, in the app process: a poller thread claims due work in batches (new
deliveries, woken by each commit; retries; whatever an earlier process left pending) and loads
it in the same transaction; the engine's HTTP client makes up to ``settings.workers`` attempts at
once on its one thread (see :mod:`..client`); a recorder thread writes their results in
batches."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta

from flask import Flask

from ..storage import claims, outbox
from ..storage.holders import new_token
from ..storage.rows import AttemptRecord, Claimed
from ..tracing import AttemptSpan
from .attempt import abandon, conclude, record
from .client import Client, Job, SendResult
from .context import DeliveryContext
from .destinations import destination_of
from .inflight import InFlight
from .outage import Outage, unreachable
from .outcomes import outcome_of
from .pacer import Pacer
from .recorder import Recorder
from .requests import Request, request_of
from .returns import Returns
from .shares import SETTLING_POLL, Shares

logger = logging.getLogger("flask_kaizen_webhooks")

#: What comes back with an attempt's result: the delivery, its destination (whose slot it
#: holds, see :func:`..destinations.destination_of`), when the attempt started and its span.
Context = tuple[Claimed, str, datetime, AttemptSpan]

#: Seconds of lease an attempt needs beyond its own time limits, or the lease is renewed first.
LEASE_MARGIN = 5.0
#: Seconds between looks for claims of processes of this machine that died (the first look is
#: at start).
DEAD_CLAIMS_EVERY = 60.0
#: Seconds a small claim round waits while attempts are under way, for it to grow.
CLAIM_GATHER = 0.01
#: Deliveries claimed ahead in one round (at least two per attempt at once): one short
#: transaction loads work for many attempts.
CLAIM_AHEAD = 64


class ThreadExecutor:
    """Delivers asynchronous webhooks from the outbox, up to ``settings.workers`` at once.

    The database is the source of truth: memory only holds claimed work about to be sent (at
    most about two rounds of it, plus work parked behind a busy registration or host) and
    attempts about to be recorded. Attempts are recorded in batches by one thread.
    """

    def __init__(self, app: Flask, context: DeliveryContext, client: Client) -> None:
        self._app = app
        self._context = context
        self._client = client
        settings = context.settings
        self._ahead = min(max(2 * settings.workers, CLAIM_AHEAD), settings.max_queue)
        self._closed = False  # stopped on purpose: only an explicit start() resumes
        self.after_fork()

    def after_fork(self) -> None:
        """Forget the threads and everything in memory (in a forked child: the parent's, whose
        locks may have been held at the fork); nothing runs until :meth:`start`."""
        settings = self._context.settings
        self._in_flight: InFlight[Claimed] = InFlight(
            settings.max_in_flight_per_registration,
            settings.max_in_flight_per_host,
            park_per_host=self._ahead,
            park_total=settings.max_queue,
            granted=True,
            adaptive=settings.adaptive_concurrency,
        )
        #: This run's shares of the caps held across processes.
        self._shares = Shares(settings, self._client.addresses)
        #: The database's outage, told once for the whole engine (poller, recorder, sweep).
        self.database_outage = Outage(
            "the database",
            "due deliveries wait in the outbox, and the results of attempts in memory",
        )
        self._returns = Returns(self._app, self._context, self._shares, self.database_outage)
        self._pacer: Pacer[Claimed] = Pacer(
            self._app, self._context, self._paced, self.database_outage
        )
        self._recorder: Recorder[AttemptRecord] = Recorder(
            self._record,
            name="kaizen-webhooks-recorder",
            expecting=self._in_flight.busy,
            outage=self.database_outage,
        )
        self._lock = threading.Lock()
        self._sender: Client | None = None
        self._poller: threading.Thread | None = None
        #: Deliveries whose lease must be renewed before their attempt (by the poller).
        self._renewals: queue.SimpleQueue[tuple[Claimed, str]] = queue.SimpleQueue()
        #: Deliveries whose slot came free while stopping: to be given back.
        self._unsent: list[Claimed] = []
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._pid: int | None = None

    @property
    def running(self) -> bool:
        """True while the threads of this process run."""
        return self._pid == os.getpid() and not self._stopping.is_set()

    def state(self) -> str:
        """``running``; ``stopped``; or ``died``: started, its poller thread ended unstopped."""
        if not self.running:
            return "stopped"
        return "running" if self._poller is not None and self._poller.is_alive() else "died"

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
            # Fresh events and sender: threads of an earlier run that did not stop in time keep
            # their own, and end without touching these.
            stopping, wake = threading.Event(), threading.Event()
            self._stopping, self._wake = stopping, wake
            self._pid = os.getpid()
            settings = self._context.settings
            sender = self._sender = self._client
            self._poller = threading.Thread(
                target=self._poll,
                args=(sender, stopping, wake),
                name="kaizen-webhooks-poller",
                daemon=True,
            )
            self._poller.start()
            atexit.register(self.stop)
        logger.info("Webhook dispatcher started: up to %d attempts at once", settings.workers)

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
        """Stop taking work, let attempts under way finish (up to ``timeout`` seconds), record
        them, and give back claimed work that was not attempted. Nothing pending is lost: it
        stays in the outbox."""
        with self._lock:
            self._closed = True
            if not self.running:
                return
            self._stopping.set()
            self._wake.set()
            poller, sender = self._poller, self._sender
            self._poller = None
        deadline = time.monotonic() + timeout
        assert poller is not None and sender is not None
        poller.join(max(0.0, deadline - time.monotonic()))
        left: list[Claimed] = []
        for job in sender.stop(max(0.0, deadline - time.monotonic())):
            if job.done == self._finished:  # the engine's (the client may carry others')
                item, host, _started, span = job.context
                span.end()  # unanswered, if it started
                left += self._release_all([item], host)
        while True:
            try:
                item, host = self._renewals.get_nowait()
            except queue.Empty:
                break
            left += self._release_all([item], host)
        for item, host in self._pacer.take_all():
            left += self._release_all([item], host)
        left += self._unsent + self._returns.take_waiting() + self._in_flight.unpark_all()
        self._unsent = []
        self._returns.give_back(left, due=self._context.clock.now(), shares=True)
        self._recorder.stop(max(1.0, deadline - time.monotonic()))
        atexit.unregister(self.stop)
        logger.info("Webhook dispatcher stopped")

    def _begin(
        self,
        items: list[Claimed],
        host: str,
        *,
        renewed: bool = False,
        start_by: float | None = None,
    ) -> None:
        """Start the attempts of ``items``, whose slots are held (and, when one ends at once, of
        the parked work its slot goes to); a lease is renewed first if it is running out,
        unless it was just ``renewed``. The attempts of rate-limited registrations wait for
        their start times in the pacer, unless ``items`` is one delivery whose time came: it
        must ``start_by`` then (``time.monotonic()``)."""
        context = self._context
        sender = self._sender
        waiting = list(items)
        while waiting:
            item = waiting.pop(0)
            if self._stopping.is_set() or sender is None:
                self._unsent += self._release_all([item, *waiting], host)
                return
            per_second = self._per_second(item)
            if per_second is not None and start_by is None:
                self._pacer.put(item.registration_id, per_second, item, host)
                continue
            paced_by, start_by = start_by or math.inf, None
            started = context.clock.now()
            spare = self._spare_lease(item, started)
            if spare < LEASE_MARGIN and not renewed:
                self._renewals.put((item, host))  # the poller renews it, then it starts
                self._wake.set()
                continue
            renewed = False
            request = request_of(context, item)
            if isinstance(request, Request):
                job: Job[Context] = Job(
                    request.url,
                    request.body,
                    request.headers,
                    context.settings.async_timeout,
                    (item, host, started, request.span),
                    self._finished,
                    late=self._late,
                    starting=request.span.start,
                    # later, it goes to _late
                    start_by=min(time.monotonic() + spare, paced_by),
                )
                sender.send(job)
                continue
            waiting += self._conclude(item, host, started, request)

    def _paced(self, item: Claimed, host: str, start_by: float) -> None:
        """A rate-limited registration's attempt's start time came (the pacer's thread)."""
        self._begin([item], host, start_by=start_by)

    def _per_second(self, item: Claimed) -> int | None:
        """The most attempts a second for ``item``'s registration, if it is rate-limited."""
        own = None if item.target is None else item.target.max_per_second
        return own or self._context.settings.default_max_per_second

    def _finished(self, context: Context, result: SendResult) -> None:
        """An attempt came to ``result`` (on the sender's thread): record it, start what its
        slot goes to, and wake the poller when the work in memory runs low."""
        item, host, started, span = context
        span.end(outcome_of(result), result.status_code, result.elapsed)
        self._in_flight.answered(item.registration_id, result)
        self._begin(self._conclude(item, host, started, result), host)
        sender = self._sender
        if (
            sender is not None
            and sender.load + self._in_flight.parked < self._ahead // 2
            and not self._wake.is_set()
        ):
            self._wake.set()  # running low: the poller claims the next round now

    def _late(self, context: Context) -> None:
        """An attempt waited too long to start (on the sender's thread): its lease is renewed
        by the poller, then it goes to the sender again."""
        item, host, _started, _span = context  # not started: a new one goes with the renewal
        self._renewals.put((item, host))
        self._wake.set()

    def _conclude(
        self, item: Claimed, host: str, started: datetime, result: SendResult
    ) -> list[Claimed]:
        """Queue the record of ``item``'s attempt and free its slot; the parked work the slot
        goes to comes back."""
        try:
            self._recorder.put(conclude(self._context, item, started, result))
        except Exception:
            logger.exception("Delivery %s: unexpected error; it will be retried", item.delivery_id)
        return self._in_flight.release(item.registration_id, host)

    def _release_all(self, items: list[Claimed], host: str) -> list[Claimed]:
        """Free the slots of ``items`` without attempting them, and the slots of the parked work
        they would go to: all of them come back, to be given back."""
        released = []
        following = list(items)
        while following:
            item = following.pop()
            released.append(item)
            following += self._in_flight.release(item.registration_id, host)
        return released

    def _spare_lease(self, item: Claimed, now: datetime) -> float:
        """Seconds ``item``'s lease outlasts the longest attempt from ``now``: its attempt must
        start within them, or another process could take it over while it is being sent."""
        settings = self._context.settings
        return (item.lease_until - now).total_seconds() - (
            settings.async_timeout + settings.connect_timeout
        )

    def _renew(self, item: Claimed, host: str) -> None:
        """Renew the lease of work that waited long in memory, then start it (no other process
        takes it over while it runs); or drop it if another process already has."""
        context = self._context
        lease_until = context.clock.now() + timedelta(seconds=context.settings.lease_seconds)
        try:
            with context.database.writing() as session:
                renewed = claims.extend_claim(
                    session, delivery_id=item.delivery_id, token=item.token, lease_until=lease_until
                )
        except Exception as exc:
            self.database_outage.failed(exc, f"Renewing the claim of delivery {item.delivery_id}")
            renewed = False
        if renewed:
            self._begin([dataclasses.replace(item, lease_until=lease_until)], host, renewed=True)
        else:
            logger.info("Delivery %s: claim expired before its attempt", item.delivery_id)
            self._begin(self._in_flight.release(item.registration_id, host), host)

    def _abandon(self, item: Claimed) -> None:
        try:
            abandon(self._app, self._context, item)
        except Exception:
            logger.exception("Delivery %s: unexpected error; it will be retried", item.delivery_id)

    def _record(self, records: Sequence[AttemptRecord]) -> None:
        with self._app.app_context():
            record(self._app, self._context, records)
        if any(item.final and item.ordered for item in records):
            self.wake()  # the next delivery of a FIFO registration may go now

    def _poll(self, sender: Client, stopping: threading.Event, wake: threading.Event) -> None:
        settings = self._context.settings
        look_for_dead_claims = 0.0  # time.monotonic() of the next look
        while not stopping.is_set():
            if time.monotonic() >= look_for_dead_claims and self._returns.release_dead_claims():
                look_for_dead_claims = time.monotonic() + DEAD_CLAIMS_EVERY
            try:
                with self._app.app_context():
                    self._returns.give_back_again()
                    self._renew_waiting(stopping)
                    backlog = self._in_flight.backlog()
                    room = self._ahead - sender.load - backlog.waiting
                    if 0 < room < self._ahead // 4 and sender.load:
                        # Attempts are under way: a moment for more work to come due and more
                        # slots to free, so that the claim (a transaction) carries more.
                        stopping.wait(CLAIM_GATHER)
                        backlog = self._in_flight.backlog()
                        room = self._ahead - sender.load - backlog.waiting
                    skip = backlog.skip_registrations | self._shares.resting()
                    claimed = self._claim_due(room, skip)
                    self.database_outage.works()
                    self._dispatch(claimed)
                    if room > 0 and len(claimed) == room:
                        continue  # more may be due: look again at once
            except Exception as exc:
                if unreachable(exc):
                    self.database_outage.failed(exc, "Looking for due deliveries")
                else:
                    logger.exception("Webhook poller: looking for due deliveries failed")
            interval = settings.poll_interval
            if self._shares.unsettled:
                interval = min(interval, SETTLING_POLL)
            wake.wait(interval)
            wake.clear()

    def _renew_waiting(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                item, host = self._renewals.get_nowait()
            except queue.Empty:
                return
            self._renew(item, host)

    def _dispatch(self, claimed: list[Claimed]) -> None:
        """Start what may start now (its slot taken), park what must wait for a busy
        registration or host, and give back what does not fit in memory."""
        refused = []
        for item in claimed:
            if item.target is None:
                self._abandon(item)
                continue
            host = destination_of(item.target.url, self._client.addresses)
            taken = self._in_flight.acquire(item.registration_id, host, item)
            if taken:
                self._begin([item], host)
            elif taken is False:
                refused.append(item)
        if refused:
            # Too much is already waiting for this host: back to the outbox for a while.
            context = self._context
            later = context.clock.now() + timedelta(seconds=context.settings.poll_interval)
            self._returns.give_back(refused, due=later)

    def _claim_due(self, limit: int, skip_registrations: AbstractSet[str]) -> list[Claimed]:
        """Claim up to ``limit`` due deliveries (none when ``limit`` is not positive) and, in the
        same transaction, bring this run's shares of the caps in line with its work (the
        claimed deliveries included); the grants apply once it commits."""
        context = self._context
        now = context.clock.now()
        token = new_token()
        lease_until = now + timedelta(seconds=context.settings.lease_seconds)
        claimed: list[Claimed] = []
        with context.database.writing() as session:
            if limit > 0:
                outbox.expand_events(session, now=now)  # committed in the hosts' transactions
                claimed = claims.claim_due(
                    session,
                    now=now,
                    lease_until=lease_until,
                    token=token,
                    limit=limit,
                    skip_registrations=skip_registrations,
                )
            grants = self._shares.share(
                session, self._in_flight.needs(), claimed, now=now, until=lease_until
            )
        if grants is not None:
            self._shares.written()
            started: dict[str, list[Claimed]] = {}
            for item, host in self._in_flight.grant(*grants, until=self._shares.grants_until):
                started.setdefault(host, []).append(item)
            for host, items in started.items():
                self._begin(items, host)
            self._give_back_starved()
        return claimed

    def _give_back_starved(self) -> None:
        """Give the parked work of registrations and hosts whose caps other processes hold
        back to the outbox, due now, for them to send; and leave it alone for a while."""
        registrations, hosts = self._shares.starved()
        if not registrations and not hosts:
            return
        items = self._in_flight.take_parked(registrations, hosts)
        if items:
            self._shares.rest({item.registration_id for item in items})
            self._returns.give_back(items, due=self._context.clock.now())
