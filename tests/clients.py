"""HTTP clients for tests: :func:`client` makes one, as the extension would (the strict address
policy unless a test gives another); every client a test makes is stopped after it."""

from __future__ import annotations

import ipaddress
from typing import Any

from flask_kaizen_webhooks.delivery.client import Client
from flask_kaizen_webhooks.guard import AddressPolicy

#: Only the test servers' address is open.
LOOPBACK = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
_made: list[Client] = []


def client(**options: Any) -> Client:
    """A client with small limits (1 KiB answers, 8 attempts at once, 1 s to connect), stopped
    when the test ends."""
    settings: dict[str, Any] = {"max_response_bytes": 1024, "max_active": 8, "connect_timeout": 1.0}
    _made.append(Client(**{**settings, **options}))
    return _made[-1]


def stop_all() -> None:
    """Stop the clients the test made; none may be left with work in hand."""
    while _made:
        _made.pop().stop(1.0)
