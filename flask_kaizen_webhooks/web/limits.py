"""Per-owner limits on what an integrator can make the host send at once: test webhooks and
redeliveries, counted per minute in the database, so they hold across every process.

Past a limit the API answers ``429`` with ``Retry-After``: an integrator can neither flood a
third party through the host nor take capacity that others wait on.
"""

from __future__ import annotations

import math

from ..clock import Clock
from ..errors import RateLimited
from ..storage import admin
from ..storage.database import Database


def count_call(database: Database, clock: Clock, *, kind: str, owner: str, per_minute: int) -> None:
    """Count a call of ``kind`` by ``owner``; :class:`ApiError` 429 past ``per_minute``."""
    now = clock.time()
    minute = int(now // 60)
    with database.writing() as session:
        count = admin.count_call(session, key=f"{kind}:{owner}", minute=minute)
    if count > per_minute:
        retry_after = max(1, math.ceil((minute + 1) * 60 - now))
        raise RateLimited(kind, per_minute, retry_after)
