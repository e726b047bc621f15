"""Caps on the attempts in flight per registration and per destination host, so that a few
hanging receivers hold a few of the attempts under way at most while deliveries to everyone
else keep flowing.

Work that finds its registration or host at the cap is parked in memory (its claim still held)
and started when an attempt frees a slot for it, so a busy host costs no database round trip.
A host with a full park is *saturated*: the poller stops claiming its registrations' work until
half of its park has drained, so a slow host neither fills memory nor crowds out the others.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the poller needs to know of the parked work."""

    #: Items parked for hosts that are not saturated: they count against the claim's room.
    waiting: int
    #: Registrations of saturated hosts: not to be claimed for now.
    skip_registrations: frozenset[str]


class InFlight(Generic[T]):
    """Counts attempts under way, by registration and by host, and parks work waiting for a
    slot (up to ``park_per_host`` items per host and ``park_total`` in all); thread-safe."""

    def __init__(
        self, per_registration: int, per_host: int, *, park_per_host: int = 0, park_total: int = 0
    ) -> None:
        self.per_registration = per_registration
        self.per_host = per_host
        self.park_per_host = park_per_host
        self.park_total = park_total
        self._lock = threading.Lock()
        self._registrations: Counter[str] = Counter()
        self._hosts: Counter[str] = Counter()
        self._host_registrations: dict[
            str, Counter[str]
        ] = {}  # host: its attempts, by registration
        self._parked: dict[str, deque[tuple[str, T]]] = {}
        self._parked_count = 0
        self._saturated: set[str] = set()

    def acquire(self, registration_id: str, host: str, item: T) -> bool | None:
        """Take a slot for ``item``: True when taken; otherwise it is parked (None) or, when
        parking is full, refused (False)."""
        with self._lock:
            if self._free(registration_id, host):
                self._take(registration_id, host)
                return True
            queue = self._parked.setdefault(host, deque())
            if len(queue) >= self.park_per_host or self._parked_count >= self.park_total:
                if not queue:
                    del self._parked[host]
                return False
            queue.append((registration_id, item))
            self._parked_count += 1
            if len(queue) >= self.park_per_host:
                self._saturated.add(host)
            return None

    def release(self, registration_id: str, host: str) -> T | None:
        """Give a slot back; a parked item of the same host that may go now comes back with
        the slot already taken for it."""
        with self._lock:
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
            queue = self._parked.get(host)
            if not queue:
                return None
            for index, (waiting_registration, item) in enumerate(queue):
                if self._free(waiting_registration, host):
                    del queue[index]
                    self._parked_count -= 1
                    if len(queue) <= self.park_per_host // 2:
                        self._saturated.discard(host)
                    if not queue:
                        del self._parked[host]
                    self._take(waiting_registration, host)
                    return item
            return None

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
            skip: set[str] = set()
            waiting = 0
            for host, queue in self._parked.items():
                if host in self._saturated:
                    skip.update(registration_id for registration_id, _ in queue)
                    skip.update(self._host_registrations.get(host, ()))
                else:
                    waiting += len(queue)
            return Backlog(waiting, frozenset(skip))

    def unpark_all(self) -> list[T]:
        """Every parked item, removed (to give their claims back on shutdown)."""
        with self._lock:
            items = [item for queue in self._parked.values() for _, item in queue]
            self._parked.clear()
            self._parked_count = 0
            self._saturated.clear()
            return items

    def _free(self, registration_id: str, host: str) -> bool:
        return (
            self._registrations[registration_id] < self.per_registration
            and self._hosts[host] < self.per_host
        )

    def _take(self, registration_id: str, host: str) -> None:
        self._registrations[registration_id] += 1
        self._hosts[host] += 1
        self._host_registrations.setdefault(host, Counter())[registration_id] += 1
