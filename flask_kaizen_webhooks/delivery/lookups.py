"""The address guard at send time: which checked address a URL's host goes to now.

A host name is looked up on a thread of its own (:class:`Lookups`); every address the answer
holds is judged by the :class:`~flask_kaizen_webhooks.guard.AddressPolicy`, and the first is
kept for :data:`PIN_SECONDS` (:class:`Pins`): the HTTP client pins libcurl to it, so that a
connection goes to a checked address, never to a second lookup's answer.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Sequence

from ..errors import ForbiddenDestination
from ..guard import (
    ALLOW_NETWORK_HINT,
    AddressPolicy,
    IPAddress,
    Resolver,
    is_local_name,
)
from .destinations import AddressBook

#: Name lookups under way at once, at most (each on a thread of its own).
MAX_LOOKUPS = 1024
#: Seconds a host's checked address is used before it is looked up again.
PIN_SECONDS = 60.0
#: Hosts whose checked address is kept, at most (all are forgotten past it).
MAX_PINS = 4096

Lookup = concurrent.futures.Future[Sequence[IPAddress]]


class Lookups:
    """Name lookups, each on a thread of its own, so that one integrator's slow names never
    hold up the lookups of anyone else's. A name already being looked up is not looked up a
    second time: its callers share the answer. At most ``limit`` names are looked up at once;
    past that a lookup fails at once rather than queueing behind lookups that hang."""

    def __init__(self, resolver: Resolver, *, limit: int = MAX_LOOKUPS) -> None:
        self.resolver = resolver
        self.limit = limit
        self._lock = threading.Lock()
        self.under_way: dict[tuple[str, int], Lookup] = {}

    def look_up(self, host: str, port: int) -> Lookup:
        """The addresses of ``host``, to come (an OSError if it cannot be looked up now)."""
        key = (host.lower(), port)
        with self._lock:
            future = self.under_way.get(key)
            if future is not None:
                return future
            future = Lookup()
            if len(self.under_way) >= self.limit:
                future.set_exception(OSError(f"{self.limit} name lookups are under way"))
                return future
            self.under_way[key] = future
            try:
                threading.Thread(
                    target=self._run, args=(key, future), name="kaizen-webhooks-dns", daemon=True
                ).start()
            except RuntimeError as exc:  # no thread can start now: nothing left behind
                del self.under_way[key]
                future.set_exception(OSError(f"no thread to look {host!r} up: {exc}"))
            return future

    def _run(self, key: tuple[str, int], future: Lookup) -> None:
        try:
            future.set_result(self.resolver(*key))
        except BaseException as exc:  # handed to every caller waiting for this name
            future.set_exception(exc)
        finally:
            with self._lock:
                if self.under_way.get(key) is future:
                    del self.under_way[key]


class Pins:
    """The checked address each host (and port) goes to, for a while; used by one thread."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver) -> None:
        self.policy = policy
        self.lookups = Lookups(resolver)
        #: The address each host name was last pinned to (what per-host caps count).
        self.addresses = AddressBook()
        self._pins: dict[tuple[str, int], tuple[IPAddress, float]] = {}

    def pinned(self, host: str, port: int, literal: IPAddress | None) -> IPAddress | None:
        """The checked address ``host`` goes to, if it was judged recently (None: look it up);
        an address ``literal`` is judged at once. ForbiddenDestination if it may not be
        called."""
        pin = self._pins.get((host, port))
        if pin is not None and pin[1] > time.monotonic():
            return pin[0]
        return None if literal is None else self.pin(host, port, [literal])

    def judge_unresolved(self, host: str, port: int, literal: IPAddress | None) -> None:
        """What can be judged without looking ``host`` up (behind a proxy, which does): an
        address literal, a local name, the port (ForbiddenDestination)."""
        if literal is not None:
            self.pin(host, port, [literal])
        elif is_local_name(host):
            raise ForbiddenDestination(f"{host!r} is a local name. {ALLOW_NETWORK_HINT}")
        else:
            self.policy.check_port(port, [])

    def pin(self, host: str, port: int, addresses: Sequence[IPAddress]) -> IPAddress:
        """Judge every address a lookup of ``host`` gave (ForbiddenDestination if one may not
        be called); the first is used for :data:`PIN_SECONDS`, so that one attempt makes at
        most one connection."""
        checked = self.policy.checked_addresses(host, port, lambda _host, _port: addresses)
        if len(self._pins) >= MAX_PINS:
            self._pins.clear()
        self._pins[(host, port)] = (checked[0], time.monotonic() + PIN_SECONDS)
        self.addresses.note(host, checked[0])
        return checked[0]
