"""Caps on the attempts in flight per registration and per destination host, so that a few
hanging receivers hold a few of the attempts under way at most while deliveries to everyone
else keep flowing.

Work that finds its registration or host at the cap is parked in memory (its claim still held)
and started when an attempt frees a slot for it, so a busy host costs no database round trip.
A freed slot of a host goes to the parked registration with the fewest attempts in flight there
(ties: the oldest work), the host's last free slot only to a registration with nothing in
flight there, and a registration whose attempts time out holds one slot at most (and all such
registrations together half the host's), so a hanging endpoint cannot starve a healthy one on
the same host.

A registration with a full park, or a host with a full park, is *saturated*: the poller stops
claiming its work until half of that park has drained, so a slow registration or host neither
fills memory nor crowds out the others.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Generic, TypeVar

from .adaptive import Concurrency, verdict_of
from .transfer import SendResult

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the poller needs to know of the parked work."""

    #: Items parked for hosts that are not saturated: they count against the claim's room.
    waiting: int
    #: Registrations of saturated hosts: not to be claimed for now.
    skip_registrations: frozenset[str]


@dataclass(frozen=True, slots=True)
class Needs:
    """What :meth:`InFlight.needs` tells: (under way, parked) by registration and by host."""

    registrations: dict[str, tuple[int, int]]
    hosts: dict[str, tuple[int, int]]
    timing_out: frozenset[str]
    #: The slots granted now (see :meth:`InFlight.grant`), by registration and by host.
    registration_grants: dict[str, int]
    host_grants: dict[str, int]


class InFlight(Generic[T]):
    """Counts attempts under way, by registration and by host, and parks work waiting for a
    slot (up to ``park_per_host`` items per host and ``park_total`` in all); thread-safe."""

    def __init__(
        self,
        per_registration: int,
        per_host: int,
        *,
        park_per_host: int = 0,
        park_total: int = 0,
        park_per_registration: int | None = None,
        granted: bool = False,
        adaptive: bool = False,
    ) -> None:
        self.per_registration = per_registration
        #: Each registration's limit within ``per_registration`` (see :mod:`.adaptive`).
        self.concurrency = Concurrency(per_registration, adaptive=adaptive)
        self.per_host = per_host
        #: With ``granted``, a registration or host may only use the slots granted to it (see
        #: :meth:`grant`): its share of a cap held across processes.
        self.granted = granted
        self._registration_grants: dict[str, int] = {}
        self._host_grants: dict[str, int] = {}
        self._grants_until = math.inf
        self.park_per_host = park_per_host
        self.park_total = park_total
        #: So that one registration's backlog leaves room in its host's park for the others.
        self.park_per_registration = (
            max(2 * per_registration, park_per_host // 8)
            if park_per_registration is None
            else park_per_registration
        )
        self._lock = threading.Lock()
        self._registrations: Counter[str] = Counter()
        self._hosts: Counter[str] = Counter()
        #: host: its attempts in flight, by registration.
        self._host_registrations: dict[str, Counter[str]] = {}
        self._parked: dict[str, deque[tuple[str, T]]] = {}
        self._parked_count = 0
        self._parked_by_registration: Counter[str] = Counter()
        self._saturated: set[str] = set()
        self._saturated_registrations: set[str] = set()
        self._timing_out: set[str] = set()
        #: Registrations whose attempts time out in another process (with ``granted``).
        self._timing_out_elsewhere: AbstractSet[str] = frozenset()
        #: The host each registration with work in flight or parked counts against: kept while
        #: it has any, so its attempts and its parked work always meet under one key, even when
        #: the key its URL maps to changes meanwhile (a name first connected to, a new address).
        self._host_of: dict[str, str] = {}

    def acquire(self, registration_id: str, host: str, item: T) -> bool | None:
        """Take a slot for ``item``: True when taken; otherwise it is parked (None) or, when
        parking is full, refused (False)."""
        with self._lock:
            known = self._host_of.setdefault(registration_id, host)
            if known != host:
                host = self._move(registration_id, known, host)
            if self._free(registration_id, host):
                self._take(registration_id, host)
                return True
            queue = self._parked.setdefault(host, deque())
            parked_here = self._parked_by_registration[registration_id]
            if (
                len(queue) >= self.park_per_host
                or parked_here >= self.park_per_registration
                or self._parked_count >= self.park_total
            ):
                if not queue:
                    del self._parked[host]
                if not parked_here:
                    del self._parked_by_registration[registration_id]
                self._forget_host(registration_id)
                return False
            queue.append((registration_id, item))
            self._parked_count += 1
            self._parked_by_registration[registration_id] = parked_here + 1
            if len(queue) >= self.park_per_host:
                self._saturated.add(host)
            if parked_here + 1 >= self.park_per_registration:
                self._saturated_registrations.add(registration_id)
            return None

    def answered(self, registration_id: str, result: SendResult) -> None:
        """Note how ``registration_id``'s receiver answered an attempt: whether it timed out,
        and what that does to its adapted limit."""
        self.timing_out(registration_id, result.timed_out)
        self.concurrency.observe(registration_id, verdict_of(result), result.elapsed)

    def timing_out(self, registration_id: str, timed_out: bool) -> None:
        """Note whether ``registration_id``'s last attempt timed out: while its attempts time
        out, it holds one slot at most."""
        if timed_out == (registration_id in self._timing_out):
            return  # the common case, read without the lock: nothing changes
        with self._lock:
            if timed_out:
                self._timing_out.add(registration_id)
            else:
                self._timing_out.discard(registration_id)

    def release(self, registration_id: str, host: str) -> list[T]:
        """Give a slot back; the parked items of the same host that may go now come back, each
        with its slot already taken (more than one when the freed slot lets another
        registration take a slot it was kept from)."""
        with self._lock:
            host = self._host_of.get(registration_id, host)
            self._registrations[registration_id] -= 1
            if not self._registrations[registration_id]:
                del self._registrations[registration_id]
            self._hosts[host] -= 1
            if not self._hosts[host]:
                del self._hosts[host]
            attempts = self._host_registrations[host]
            attempts[registration_id] -= 1
            if not attempts[registration_id]:
                del attempts[registration_id]
                if not attempts:
                    del self._host_registrations[host]
            self._forget_host(registration_id)
            started: list[T] = []
            released_by: str | None = registration_id
            while (queue := self._parked.get(host)) and self._hosts[host] < self._host_cap(host):
                index = self._next_parked(host, queue, released_by=released_by)
                if index is None:
                    break
                started.append(self._unpark(host, queue, index))
                released_by = None
            return started

    def _unpark(self, host: str, queue: deque[tuple[str, T]], index: int) -> T:
        """Take parked item ``index`` of ``host`` out of the park, its slot taken."""
        waiting_registration, item = queue[index]
        self._remove_parked(host, queue, index)
        self._take(waiting_registration, host)
        return item

    def take_parked(self, registrations: AbstractSet[str], hosts: AbstractSet[str]) -> list[T]:
        """Take out of the park, without a slot, the items of ``registrations`` and of
        ``hosts`` (to give them back)."""
        with self._lock:
            taken: list[T] = []
            owners: set[str] = set()
            for host in list(self._parked):
                queue = self._parked[host]
                for index in reversed(range(len(queue))):
                    registration_id, item = queue[index]
                    if host in hosts or registration_id in registrations:
                        self._remove_parked(host, queue, index)
                        taken.append(item)
                        owners.add(registration_id)
            for registration_id in owners:
                self._forget_host(registration_id)
            return taken

    def _remove_parked(self, host: str, queue: deque[tuple[str, T]], index: int) -> None:
        waiting_registration, _item = queue[index]
        del queue[index]
        self._parked_count -= 1
        if len(queue) <= self.park_per_host // 2:
            self._saturated.discard(host)
        if not queue:
            del self._parked[host]
        left = self._parked_by_registration[waiting_registration] - 1
        if left:
            self._parked_by_registration[waiting_registration] = left
        else:
            del self._parked_by_registration[waiting_registration]
        if left <= self.park_per_registration // 2:
            self._saturated_registrations.discard(waiting_registration)

    def _next_parked(
        self, host: str, queue: deque[tuple[str, T]], *, released_by: str | None
    ) -> int | None:
        """The index of the parked item a freed slot of ``host`` goes to: of the registrations
        that may start an attempt, the one with the fewest in flight on ``host``, its oldest
        item (the queue is oldest first). The attempt that just ended still counts for its
        registration here, so that on a tie the slot moves on to another one."""
        in_flight = self._host_registrations.get(host, Counter())
        best: int | None = None
        fewest = 0
        seen: set[str] = set()
        for index, (registration_id, _item) in enumerate(queue):
            if registration_id in seen:
                continue
            seen.add(registration_id)
            if not self._free(registration_id, host):
                continue
            count = in_flight[registration_id] + (registration_id == released_by)
            if best is None or count < fewest:
                best, fewest = index, count
                if count == 0:
                    break
        return best

    def grant(
        self,
        registrations: Mapping[str, int],
        hosts: Mapping[str, int],
        timing_out: AbstractSet[str] = frozenset(),
        *,
        until: float = math.inf,
    ) -> list[tuple[T, str]]:
        """Set the slots granted to each registration and host (the others get none) until
        ``until`` (``time.monotonic()``; no attempt starts under them after that), and the
        registrations whose attempts time out in other processes (held here as if they timed
        out here too); the parked items that may start now come back with their hosts, each
        with its slot taken."""
        with self._lock:
            self._grants_until = until
            self._registration_grants = dict(registrations)
            self._host_grants = dict(hosts)
            self._timing_out_elsewhere = frozenset(timing_out)
            started: list[tuple[T, str]] = []
            for host in list(self._parked):
                while (queue := self._parked.get(host)) and self._hosts[host] < self._host_cap(
                    host
                ):
                    index = self._next_parked(host, queue, released_by=None)
                    if index is None:
                        break
                    started.append((self._unpark(host, queue, index), host))
            return started

    def needs(self) -> Needs:
        """The attempts under way and the items parked, by registration and by host. A host's
        parked items count only as far as their registrations' caps let them start: work held
        back by its registration does not keep slots of the host from work elsewhere."""
        with self._lock:
            registrations = {
                key: (self._registrations[key], self._parked_to_start(key))
                for key in self._registrations.keys() | self._parked_by_registration.keys()
            }
            startable: Counter[str] = Counter()
            for registration_id, parked in self._parked_by_registration.items():
                startable[self._host_of[registration_id]] += min(
                    parked, self._room(registration_id)
                )
            hosts = {
                key: (self._hosts[key], startable[key])
                for key in self._hosts.keys() | self._parked.keys()
            }
            return Needs(
                registrations,
                hosts,
                frozenset(self._timing_out),
                dict(self._registration_grants),
                dict(self._host_grants),
            )

    def _parked_to_start(self, registration_id: str) -> int:
        """The registration's parked work; adapting, as far as its limit lets it start."""
        parked = self._parked_by_registration[registration_id]
        if not self.concurrency.adaptive:
            return parked
        limit = self.concurrency.limit(registration_id)
        return min(parked, max(0, limit - self._registrations[registration_id]))

    def busy(self) -> bool:
        """True while any attempt is under way (read without the lock: a hint)."""
        return bool(self._hosts)

    @property
    def parked(self) -> int:
        """How many items are parked (read without the lock: a hint)."""
        return self._parked_count

    def backlog(self) -> Backlog:
        """The parked work, as the poller sees it."""
        with self._lock:
            skip: set[str] = set(self._saturated_registrations)
            waiting = 0
            for host, queue in self._parked.items():
                if host in self._saturated:
                    skip.update(registration_id for registration_id, _ in queue)
                    skip.update(self._host_registrations.get(host, ()))
                else:
                    waiting += sum(1 for registration_id, _ in queue if registration_id not in skip)
            return Backlog(waiting, frozenset(skip))

    def unpark_all(self) -> list[T]:
        """Every parked item, removed (to give their claims back on shutdown)."""
        with self._lock:
            items = [item for queue in self._parked.values() for _, item in queue]
            self._parked.clear()
            self._parked_count = 0
            self._parked_by_registration.clear()
            self._saturated.clear()
            self._saturated_registrations.clear()
            for registration_id in list(self._host_of):
                self._forget_host(registration_id)
            return items

    def _move(self, registration_id: str, old: str, new: str) -> str:
        """Count ``registration_id``'s attempts in flight and parked work against host key
        ``new`` rather than ``old`` (its URL's key changed: a name now counted by the address
        it was connected to), so its attempts and its parked work keep meeting under one key
        and one server is not given slots under two; the key it now counts against.

        Not while other registrations' work is parked under ``old``: it waits for the slots
        the attempts there free, this registration's too (it moves once that park drains)."""
        queue = self._parked.get(old)
        if queue and any(entry[0] != registration_id for entry in queue):
            return old
        self._host_of[registration_id] = new
        count = self._host_registrations.get(old, Counter()).pop(registration_id, 0)
        if count:
            if not self._host_registrations[old]:
                del self._host_registrations[old]
            self._hosts[old] -= count
            if not self._hosts[old]:
                del self._hosts[old]
            self._hosts[new] += count
            self._host_registrations.setdefault(new, Counter())[registration_id] += count
        if queue:  # only this registration's work: all of it moves along
            del self._parked[old]
            self._saturated.discard(old)
            target = self._parked.setdefault(new, deque())
            target.extend(queue)
            if len(target) >= self.park_per_host:
                self._saturated.add(new)
        return new

    def _forget_host(self, registration_id: str) -> None:
        """Drop the key of a registration with nothing in flight or parked any more."""
        if (
            not self._registrations[registration_id]
            and not (self._parked_by_registration[registration_id])
        ):
            self._host_of.pop(registration_id, None)

    def _host_cap(self, host: str) -> int:
        if not self.granted:
            return self.per_host
        if time.monotonic() >= self._grants_until:
            return 0  # the shares were not renewed in time: they may be another's now
        return min(self.per_host, self._host_grants.get(host, 0))

    def _room(self, registration_id: str) -> int:
        """How many more attempts ``registration_id``'s own cap lets start: its granted share
        of it with ``granted``, one at a time while its attempts time out."""
        limit = self.concurrency.limit(registration_id)
        if self.granted:
            limit = min(limit, self._registration_grants.get(registration_id, 0))
        if self._times_out(registration_id):
            limit = min(limit, 1)
        return max(0, limit - self._registrations[registration_id])

    def _free(self, registration_id: str, host: str) -> bool:
        held = self._hosts[host]
        per_host = self._host_cap(host)
        if held >= per_host or not self._room(registration_id):
            return False
        if not self._times_out(registration_id):
            # A host's last slot goes only to a registration with nothing in flight: however
            # its first attempts fare, an endpoint never holds every slot of its host.
            return self._registrations[registration_id] == 0 or held < per_host - 1
        # One slot each, and half the host's slots between all of them: registrations that
        # answer in time always have the other half.
        in_flight = self._host_registrations.get(host, Counter())
        timing_out = sum(count for other, count in in_flight.items() if self._times_out(other))
        return timing_out < max(1, per_host // 2)

    def _times_out(self, registration_id: str) -> bool:
        return registration_id in self._timing_out or registration_id in self._timing_out_elsewhere

    def _take(self, registration_id: str, host: str) -> None:
        self._registrations[registration_id] += 1
        self._hosts[host] += 1
        self._host_registrations.setdefault(host, Counter())[registration_id] += 1
