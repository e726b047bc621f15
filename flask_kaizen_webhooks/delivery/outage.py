"""Telling of an outage (the database or the broker restarting, unreachable) in a few lines: one
when it begins, one a minute while it lasts, one when it is over; not a traceback per try."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

logger = logging.getLogger("flask_kaizen_webhooks")

#: Seconds between the lines telling that an outage goes on.
REMIND_EVERY = 60.0


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be reached or went away (restarting,
    failing over, its connections cut, the pool waiting for one): an outage rather than a
    fault of ours."""
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout)


class Outage:
    """The state of one outside service as an engine (or one part of it) sees it; thread-safe."""

    def __init__(
        self,
        service: str,
        meanwhile: str,
        *,
        expected: Callable[[BaseException], bool] = unreachable,
    ) -> None:
        #: What fails, as the log names it (``"the database"``).
        self.service = service
        #: What happens to the work meanwhile (``"the deliveries wait in the outbox"``).
        self.meanwhile = meanwhile
        #: True for the errors that tell of the service being unreachable (told in a line, with
        #: no traceback): the database's by default.
        self.expected = expected
        self._lock = threading.Lock()
        self._since: float | None = None
        self._told = 0.0

    @property
    def down(self) -> bool:
        """True while the service fails (a hint)."""
        return self._since is not None

    def failed(self, exc: BaseException, doing: str) -> None:
        """``doing`` failed with ``exc``: a line when the outage begins and once a minute
        while it lasts; a traceback only for what is not an outage."""
        now = time.monotonic()
        with self._lock:
            first = self._since is None
            if first:
                self._since = now
            elif now - self._told < REMIND_EVERY:
                return
            self._told = now
            since = self._since
        summary = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first:
            logger.warning(
                "%s failed: %s unavailable (%s: %s); %s",
                doing,
                self.service,
                type(exc).__name__,
                summary[:300],
                self.meanwhile,
                exc_info=None if self.expected(exc) else exc,
            )
        else:
            assert since is not None
            logger.warning(
                "%s still unavailable after %.0f s (%s); %s",
                self.service,
                now - since,
                summary[:300],
                self.meanwhile,
            )

    def works(self) -> None:
        """The service answered again: a line if it had failed."""
        if self._since is None:
            return  # the common case, read without the lock
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            logger.warning(
                "%s is available again after %.1f s", self.service, time.monotonic() - since
            )
