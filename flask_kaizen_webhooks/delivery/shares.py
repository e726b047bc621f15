"""One engine's shares of the caps on attempts in flight, held across processes (see
:mod:`..storage.slots`): what it needs of each cap, from its attempts under way, its parked
work and what it just claimed; and the grants the shares give, by registration and by host."""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy.orm import Session

from ..config import Settings
from ..storage import slots
from ..storage.holders import new_token
from ..storage.rows import Claimed
from .destinations import AddressBook, destination_of
from .inflight import Needs

#: Seconds a process keeps its share of a cap after its last work for that key, so that work
#: coming in bursts does not take and give back the share each time.
LINGER = 2.0

#: Slots granted, by registration id and by host; the registrations whose attempts time out
#: in other processes.
Grants = tuple[dict[str, int], dict[str, int], frozenset[str]]


class Shares:
    """The shares of one engine run (one holder); used by its poller thread only."""

    def __init__(self, settings: Settings, addresses: AddressBook) -> None:
        self._settings = settings
        self._addresses = addresses
        #: The holder of the shares: a claim token of this process, for this run.
        self.holder = new_token()
        #: The shares as last written.
        self._shares: dict[str, slots.Share] = {}
        #: When each key last had work.
        self._active: dict[str, float] = {}
        self._pending: dict[str, slots.Share] = {}

    def share(
        self,
        session: Session,
        current: Needs,
        claimed: list[Claimed],
        *,
        now: datetime,
        until: datetime,
    ) -> Grants | None:
        """Bring the shares in line with the work (in ``session``'s transaction); the grants,
        or None when there is nothing to share. Call :meth:`written` once it commits."""
        needs = self._needs(current, claimed)
        if not needs and not self._shares:
            return None
        shared = slots.share(
            session, holder=self.holder, needs=needs, shares=self._shares, now=now, until=until
        )
        self._pending = shared.shares
        registrations: dict[str, int] = {}
        hosts: dict[str, int] = {}
        for key, grant in shared.grants.items():
            if key.startswith(slots.REGISTRATION):
                registrations[key.removeprefix(slots.REGISTRATION)] = grant
            else:
                hosts[key.removeprefix(slots.HOST)] = grant
        timing_out = frozenset(
            key.removeprefix(slots.REGISTRATION)
            for key in shared.timing_out
            if key.startswith(slots.REGISTRATION)
        )
        return registrations, hosts, timing_out

    def written(self) -> None:
        """The transaction of the last :meth:`share` committed."""
        self._shares = self._pending

    def give_back(self, session: Session) -> None:
        """Give every share back (the engine stops)."""
        slots.give_back(session, holder=self.holder)
        self._shares = {}

    def _needs(self, current: Needs, claimed: list[Claimed]) -> dict[str, slots.Need]:
        """The needs of the caps: the attempts under way, the parked work and ``claimed``, by
        registration and by host; a key with none for less than :data:`LINGER` seconds keeps
        its share."""
        now = time.monotonic()
        counts: dict[str, list[int]] = {}
        for registration_id, (under_way, parked) in current.registrations.items():
            counts[slots.REGISTRATION + registration_id] = [under_way, parked]
        for host, (under_way, parked) in current.hosts.items():
            counts[slots.HOST + host] = [under_way, parked]
        for item in claimed:
            if item.target is None:
                continue
            host = destination_of(item.target.url, self._addresses)
            for key in (slots.REGISTRATION + item.registration_id, slots.HOST + host):
                counts.setdefault(key, [0, 0])[1] += 1
        needs: dict[str, slots.Need] = {}
        for key, (under_way, parked) in counts.items():
            cap = self._cap_of(key)
            timing_out = key.removeprefix(slots.REGISTRATION) in current.timing_out
            needs[key] = slots.Need(cap, min(cap, under_way + parked), under_way, timing_out)
            self._active[key] = now
        for key in list(self._active):
            if key in needs:
                continue
            if now - self._active[key] < LINGER and key in self._shares:
                needs[key] = slots.Need(self._cap_of(key), 0, 0)
            else:
                del self._active[key]
        return needs

    def _cap_of(self, key: str) -> int:
        if key.startswith(slots.REGISTRATION):
            return self._settings.max_in_flight_per_registration
        return self._settings.max_in_flight_per_host
