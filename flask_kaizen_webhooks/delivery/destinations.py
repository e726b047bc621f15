"""What the per-host caps count: the address a webhook connects to, not how its URL spells it.

``127.0.0.1``, ``127.1``, ``2130706433`` and ``[::ffff:127.0.0.1]`` are one destination, and so
are eight DNS names of one server: the client notes the address each name was last connected
to (:class:`AddressBook`), and :func:`destination_of` keys a URL by it. A name not connected to
yet counts by itself until its first connection; nothing here looks a name up, so a slow
resolver never holds up the caller.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from functools import lru_cache
from urllib.parse import urlsplit

from ..guard import IPAddress, literal_address

#: Names whose address is remembered, least recently used dropped first.
MAX_NAMES = 4096
#: Seconds an address noted for a name is trusted (DNS answers change).
TTL = 300.0


class AddressBook:
    """The address each host name was last connected to; thread-safe, bounded."""

    def __init__(self, *, ttl: float = TTL, max_names: int = MAX_NAMES) -> None:
        self.ttl = ttl
        self.max_names = max_names
        self._lock = threading.Lock()
        self._addresses: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def note(self, name: str, address: IPAddress) -> None:
        """``name`` was connected to at ``address``."""
        with self._lock:
            self._addresses[name.lower()] = (canonical(address), time.monotonic() + self.ttl)
            self._addresses.move_to_end(name.lower())
            while len(self._addresses) > self.max_names:
                self._addresses.popitem(last=False)

    def address_of(self, name: str) -> str | None:
        """The address ``name`` was last connected to, if that is recent."""
        with self._lock:
            found = self._addresses.get(name.lower())
            if found is None:
                return None
            address, until = found
            if until < time.monotonic():
                del self._addresses[name.lower()]
                return None
            return address


def canonical(address: IPAddress) -> str:
    """One spelling per address: an IPv4-mapped IPv6 address is its IPv4 address."""
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped if mapped is not None else address)


def destination_of(url: str, book: AddressBook) -> str:
    """The key ``url``'s attempts count against: its address, when its host is an address in
    any spelling or a name connected to recently; otherwise the name."""
    host, address = _host_of(url)
    return address or book.address_of(host) or host


@lru_cache(maxsize=4096)
def _host_of(url: str) -> tuple[str, str | None]:
    """The host of ``url``, and the address it spells if it is an address literal."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return url, None
    literal = literal_address(host)
    return host, None if literal is None else canonical(literal)
