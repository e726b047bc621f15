"""Group commit: finished attempts are written together, in one short transaction per batch, by
one thread. Sending goes straight on."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from .outage import Outage

logger = logging.getLogger("flask_kaizen_webhooks")

T = TypeVar("T")

#: The most records written in one transaction.
BATCH = 500
#: Seconds between tries while the database refuses a batch.
RETRY_DELAY = 0.5
#: Tries of a single record the database refuses (not for being unreachable) before it is
#: dropped.
RECORD_TRIES = 3
#: Seconds a batch gathers after its first record before it is written, while more records
#: are on their way: under load, one transaction then carries many attempts.
GATHER = 0.02
#: Seconds between looks at whether more records are on their way, while gathering.
GATHER_STEP = 0.002


class Recorder(Generic[T]):
    """Collects records from any thread and hands them to ``write`` in batches.

    A batch gathers for up to :data:`GATHER` seconds after its first record, as long as
    ``expecting()`` says more records are on their way (and while the previous batch is
    written), so the batches grow with the load and a lone record is written at once.
    A batch the database refuses is tried again; a record not yet written when the process
    dies leaves its delivery claimed, and the claim's lease running out sends it again.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], None],
        *,
        name: str,
        expecting: Callable[[], bool] = lambda: False,
        lost: str = "their deliveries are sent again once their claims expire",
        outage: Outage | None = None,
    ) -> None:
        self._write = write
        self._lost = lost
        self._expecting = expecting
        self._name = name
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        #: The database's outage as this recorder tells it (or as the process does, when
        #: ``outage`` is shared with the other parts that write).
        self._outage = outage or Outage(
            "the database", f"the records wait in memory ({lost} if it ends)"
        )

    def put(self, record: T) -> None:
        """Queue ``record`` for writing (starting the thread on first use)."""
        if self._thread is None or not self._thread.is_alive():
            self._start()
        self._queue.put(record)

    @property
    def queued(self) -> int:
        """Records waiting to be written (a hint)."""
        return self._queue.qsize()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued (trying for up to ``timeout`` seconds), then end the thread."""
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                return
            self._stopping = True
            self._queue.put(None)
        thread.join(timeout)
        with self._lock:
            self._thread = None
            self._stopping = False

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        done = False
        while not done:
            first = self._queue.get()
            batch: list[T] = []
            if first is None:
                done = True
            else:
                batch.append(first)
                self._gather()
            while len(batch) < BATCH:
                try:
                    record = self._queue.get_nowait()
                except queue.Empty:
                    break
                if record is None:
                    done = True
                else:
                    batch.append(record)
            if batch:
                self._write_until_done(batch)

    def _gather(self) -> None:
        """Wait for more records, up to :data:`GATHER` seconds, while some are expected."""
        deadline = time.monotonic() + GATHER
        while self._expecting() and self._queue.qsize() < BATCH and time.monotonic() < deadline:
            time.sleep(GATHER_STEP)

    def _write_until_done(self, batch: list[T]) -> None:
        """Write ``batch``, trying again while the database cannot take it. A batch refused for
        what it holds (see :func:`refused`) is written record by record, so that one record the
        database will not take (tried :data:`RECORD_TRIES` times, then dropped) never holds up
        the others."""
        tries = 0
        while True:
            try:
                self._write(batch)
                self._outage.works()
                return
            except Exception as exc:
                bad = refused(exc)
                if bad and len(batch) > 1:
                    logger.exception(
                        "Recording %d records failed; recording them one by one", len(batch)
                    )
                    for record in batch:
                        self._write_until_done([record])
                    return
                tries += 1
                if self._stopping or (bad and tries >= RECORD_TRIES):
                    logger.exception(
                        "Could not record %d records; dropped (%s)", len(batch), self._lost
                    )
                    return
                if bad:
                    logger.exception("Recording %d records failed; trying again", len(batch))
                else:
                    self._outage.failed(exc, f"Recording {len(batch)} records")
                time.sleep(RETRY_DELAY)


def refused(exc: BaseException) -> bool:
    """True when the database refused what was written (a value it cannot store, a broken
    constraint), or the driver could not even send a value of it: the same records would be
    refused again. Anything else (the database unreachable, busy, its pool exhausted,
    read-only for a failover, a schema not migrated yet) may pass later, and is tried again
    with nothing dropped."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    cause = exc.orig if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError) else exc
    return isinstance(cause, ValueError | TypeError)  # a value the driver could not take
