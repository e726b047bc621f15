"""Giving claimed work back to the outbox unattempted: work that does not fit in memory, work
whose caps other processes hold, what is left when the engine stops, and the claims of
processes of this machine that died. What the database cannot
take back while it is unreachable is given back again at the next polls, rather than waiting
for its leases to end."""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from flask import Flask

from ..storage import claims, slots
from ..storage.rows import Claimed
from .context import DeliveryContext
from .outage import Outage, unreachable
from .shares import Shares

logger = logging.getLogger("flask_kaizen_webhooks")


class Returns:
    """One engine run's giving back: by its poller thread, and by ``stop`` (which may run while
    a poller that did not stop in time still does)."""

    def __init__(
        self, app: Flask, context: DeliveryContext, shares: Shares, outage: Outage
    ) -> None:
        self._app = app
        self._context = context
        self._shares = shares
        self._outage = outage
        #: Work the database could not take back yet, with when each is due.
        self._waiting: list[tuple[Claimed, datetime]] = []
        self._lock = threading.Lock()

    def give_back(self, items: list[Claimed], *, due: datetime, shares: bool = False) -> None:
        """Release the claims of ``items`` unattempted, due at ``due``; with ``shares``, this
        run's shares of the caps too (it stops: nothing is tried again)."""
        if not items and not shares:
            return
        try:
            with self._app.app_context(), self._context.database.writing() as session:
                claims.release_claims(
                    session, [(item.delivery_id, item.token) for item in items], due=due
                )
                if shares:
                    self._shares.give_back(session)
        except Exception as exc:
            if not shares:
                with self._lock:
                    self._waiting += [(item, due) for item in items]
                self._outage.failed(exc, f"Giving back {len(items)} claimed deliveries")
                return
            logger.warning(
                "Could not give back %d claimed deliveries (%s); their leases will expire and "
                "they will be sent then",
                len(items),
                type(exc).__name__,
                exc_info=None if unreachable(exc) else exc,
            )

    def give_back_again(self) -> None:
        """Give back again what the database could not take back, each due when it was to be,
        while this run's claims on it last (then it is anyone's)."""
        if not self._waiting:
            return  # the common case, read without the lock
        now = self._context.clock.now()
        with self._lock:
            waiting, self._waiting = self._waiting, []
        by_due: dict[datetime, list[Claimed]] = {}
        for item, due in waiting:
            if item.lease_until > now:
                by_due.setdefault(due, []).append(item)
        for due, items in by_due.items():
            self.give_back(items, due=due)

    def take_waiting(self) -> list[Claimed]:
        """What is still to be given back (the engine stops: it goes with the rest)."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        return [item for item, _due in waiting]

    def release_dead_claims(self) -> bool:
        """Give back the claims of processes of this machine that died (a host restarting
        after a crash, a sibling worker killed), so that their work goes out now rather than
        when their leases end; False if the database could not be asked (tried again at the
        next poll)."""
        context = self._context
        try:
            with self._app.app_context(), context.database.writing() as session:
                released = claims.release_dead_claims(session, now=context.clock.now())
                slots.give_back_dead(session)
        except Exception as exc:
            self._outage.failed(exc, "Giving back the claims of processes that died")
            return False
        if released:
            logger.warning(
                "Gave back %d deliveries claimed by processes of this machine that died",
                released,
            )
        return True
