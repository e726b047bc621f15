"""Caps on the attempts in flight per registration and per destination host, so that a few
hanging receivers hold a few workers at most while deliveries to everyone else keep flowing."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    """Counts attempts under way, by registration and by host; thread-safe."""

    def __init__(self, per_registration: int, per_host: int) -> None:
        self.per_registration = per_registration
        self.per_host = per_host
        self._lock = threading.Lock()
        self._registrations: Counter[str] = Counter()
        self._hosts: Counter[str] = Counter()

    @contextmanager
    def slot(self, registration_id: str, host: str) -> Iterator[bool]:
        """Yield True with a slot held for the attempt, or False when a cap is reached."""
        with self._lock:
            free = (
                self._registrations[registration_id] < self.per_registration
                and self._hosts[host] < self.per_host
            )
            if free:
                self._registrations[registration_id] += 1
                self._hosts[host] += 1
        try:
            yield free
        finally:
            if free:
                with self._lock:
                    self._registrations[registration_id] -= 1
                    self._hosts[host] -= 1
                    if not self._registrations[registration_id]:
                        del self._registrations[registration_id]
                    if not self._hosts[host]:
                        del self._hosts[host]
