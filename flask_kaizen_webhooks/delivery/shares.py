"""One engine's shares of the caps on attempts in flight, held across processes (see
:mod:`..storage.slots`): what it needs of each cap, from its attempts under way, its parked
work and what it just claimed; and the grants the shares give, by registration and by host."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta

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

#: The least seconds work waits here for a share of a cap that other processes hold, before
#: it is given back to the outbox for them.
STARVED_AFTER = 1.0

#: How much longer than the longest attempt a share's row must still run, or it is renewed.
RENEW_MARGIN = timedelta(seconds=5)

#: Seconds between the poller's rounds while shares may move (see :attr:`Shares.unsettled`),
#: for up to :data:`SETTLING` seconds after they last moved.
SETTLING_POLL = 0.05
SETTLING = 2.0

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
        #: Since when each key has been granted nothing while this run had work for it.
        self._refused: dict[str, float] = {}
        #: Registrations whose work this run gave back, and until when it leaves them alone.
        self._resting: dict[str, float] = {}
        #: Seconds without a grant, work waiting, before that work is given back (and then
        #: left alone as long): two polls, and at least :data:`STARVED_AFTER`.
        self._starved_after = max(2 * settings.poll_interval, STARVED_AFTER)
        #: True while shares may move soon: the poller then looks again within
        #: :data:`SETTLING_POLL` seconds.
        self.unsettled = False
        self._last_grants: dict[str, int] = {}
        self._last_wanting: set[str] = set()
        self._settling_until = 0.0
        #: When the grants last given stop letting attempts start (``time.monotonic()``).
        self.grants_until = math.inf

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
            self.unsettled = False
            return None
        # Rows are renewed while they still outlast any attempt by a margin, so that the grants
        # they back never run out under a process that keeps its rounds going.
        longest = timedelta(seconds=self._settings.async_timeout + self._settings.connect_timeout)
        shared = slots.share(
            session,
            holder=self.holder,
            needs=needs,
            shares=self._shares,
            now=now,
            until=until,
            renew_before=now + max((until - now) / 2, longest + RENEW_MARGIN),
        )
        self._pending = shared.shares
        # No attempt may start under these grants once one could outlast its share's row.
        left = min((row.until - now for row in shared.shares.values()), default=None)
        self.grants_until = (
            math.inf if left is None else time.monotonic() + (left - longest).total_seconds()
        )
        self._follow(needs, shared.grants)
        return _by_kind(shared.grants, shared.timing_out)

    def _follow(self, needs: dict[str, slots.Need], grants: dict[str, int]) -> None:
        """Note how the shares stand against the needs: whether they may move soon, and which
        keys are refused while work waits for them."""
        now = time.monotonic()
        # Waiting for slots, or keeping slots with nothing to send: other processes may give
        # or want some at their next rounds, so the next look comes soon; for a while after
        # they last moved only (two processes settled at their fair shares, one waiting for
        # more, need not keep looking that often).
        wanting = {key for key, need in needs.items() if need.wanted}
        if grants != self._last_grants or wanting != self._last_wanting:
            self._settling_until = now + SETTLING
        self._last_grants, self._last_wanting = grants, wanting
        self.unsettled = now < self._settling_until and any(
            grants[key] < need.wanted or (need.wanted == 0 and grants[key] > 0)
            for key, need in needs.items()
        )
        self._refused = {
            key: self._refused.get(key, now)
            for key, grant in grants.items()
            if grant == 0 and needs[key].wanted > needs[key].in_flight
        }

    def written(self) -> None:
        """The transaction of the last :meth:`share` committed."""
        self._shares = self._pending

    def starved(self) -> tuple[set[str], set[str]]:
        """The registrations and hosts granted nothing for two poll intervals while this run had
        work waiting for them: other processes hold their whole caps (and have been told), so
        that work is better given back to the outbox for them than kept here."""
        registrations: set[str] = set()
        hosts: set[str] = set()
        before = time.monotonic() - self._starved_after
        for key, since in self._refused.items():
            if since <= before:
                if key.startswith(slots.REGISTRATION):
                    registrations.add(key.removeprefix(slots.REGISTRATION))
                else:
                    hosts.add(key.removeprefix(slots.HOST))
        return registrations, hosts

    def rest(self, registration_ids: set[str]) -> None:
        """Leave the work of ``registration_ids`` alone for a while (as long as work waits
        before it is given back)."""
        until = time.monotonic() + self._starved_after
        for registration_id in registration_ids:
            self._resting[registration_id] = until

    def resting(self) -> frozenset[str]:
        """The registrations whose work this run leaves alone for now."""
        now = time.monotonic()
        for registration_id, until in list(self._resting.items()):
            if until <= now:
                del self._resting[registration_id]
        return frozenset(self._resting)

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
        granted = {slots.REGISTRATION + key: n for key, n in current.registration_grants.items()}
        granted |= {slots.HOST + key: n for key, n in current.host_grants.items()}
        needs: dict[str, slots.Need] = {}
        for key, (under_way, parked) in counts.items():
            cap = self._cap_of(key)
            timing_out = key.removeprefix(slots.REGISTRATION) in current.timing_out
            wanted = min(cap, under_way + parked)
            needs[key] = slots.Need(cap, wanted, under_way, timing_out, granted.get(key, 0))
            self._active[key] = now
        for key in self._active.keys() | granted.keys():
            if key in needs:
                continue
            if now - self._active.get(key, 0.0) < LINGER and key in self._shares:
                needs[key] = slots.Need(self._cap_of(key), 0, 0, granted=granted.get(key, 0))
            elif granted.get(key):  # withdrawn first, then given back at the next round
                needs[key] = slots.Need(self._cap_of(key), 0, 0, granted=granted[key], linger=False)
            else:
                self._active.pop(key, None)
        return needs

    def _cap_of(self, key: str) -> int:
        if key.startswith(slots.REGISTRATION):
            return self._settings.max_in_flight_per_registration
        return self._settings.max_in_flight_per_host


def _by_kind(grants: dict[str, int], timing_out: frozenset[str]) -> Grants:
    """``grants`` and ``timing_out`` (by cap key) as the in-process caps take them."""
    registrations: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for key, grant in grants.items():
        if key.startswith(slots.REGISTRATION):
            registrations[key.removeprefix(slots.REGISTRATION)] = grant
        else:
            hosts[key.removeprefix(slots.HOST)] = grant
    elsewhere = frozenset(
        key.removeprefix(slots.REGISTRATION)
        for key in timing_out
        if key.startswith(slots.REGISTRATION)
    )
    return registrations, hosts, elsewhere
