"""Giving claimed work back to the outbox unattempted: work that does not fit in memory, work
whose caps other processes hold, what is left when the engine stops. What the database cannot
take back while it is unreachable is given back again at the next polls, rather than waiting
for its leases to end."""

from __future__ import annotations

import logging
from datetime import datetime

from flask import Flask

from ..storage import claims
from ..storage.rows import Claimed
from .context import DeliveryContext
from .outage import Outage, unreachable
from .shares import Shares

logger = logging.getLogger("flask_kaizen_webhooks")


class Returns:
    """One engine run's giving back; used by its poller thread only (and by ``stop`` once the
    poller has ended)."""

    def __init__(
        self, app: Flask, context: DeliveryContext, shares: Shares, outage: Outage
    ) -> None:
        self._app = app
        self._context = context
        self._shares = shares
        self._outage = outage
        #: Work the database could not take back yet.
        self._waiting: list[Claimed] = []

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
                self._waiting += items
                self._outage.failed(exc, f"Giving back {len(items)} claimed deliveries")
                return
            logger.warning(
                "Could not give back %d claimed deliveries (%s); their leases will expire and "
                "they will be sent then",
                len(items),
                type(exc).__name__,
                exc_info=None if unreachable(exc) else exc,
            )

    def again(self) -> None:
        """Give back again what the database could not take back, while this run's claims on
        it last (then it is anyone's)."""
        if not self._waiting:
            return
        now = self._context.clock.now()
        items = [item for item in self._waiting if item.lease_until > now]
        self._waiting = []
        self.give_back(items, due=now)

    def take_waiting(self) -> list[Claimed]:
        """What is still to be given back (the engine stops: it goes with the rest)."""
        items, self._waiting = self._waiting, []
        return items
