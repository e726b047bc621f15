"""One thread carrying many webhook POSTs at once over non-blocking keep-alive connections.

A thread per attempt spends much of its CPU handing the interpreter lock to the next one; this
loop writes each request and feeds each answer to the parser the blocking transport uses
(:func:`.http1.parse_response`), waiting on all of its connections at once. Only the steps that
block go to helper threads: looking a name up, checking its addresses and connecting (with the
TLS handshake), for a destination without an idle connection. Every attempt keeps one deadline,
from its start to the last byte of the answer, and the same limits and results as
:meth:`.Transport.post`.

Idle connections stay watched: one the receiver closes is dropped at once, not found dead by
the next attempt.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .http1 import RECV_BYTES, Parse, Response, parse_response
from .transport import (
    MAX_DESTINATIONS,
    Route,
    SendResult,
    Transport,
    failure,
    failure_of,
    pool_key,
    result_of,
)

logger = logging.getLogger("flask_kaizen_webhooks")

T = TypeVar("T")
PoolKey = tuple[str, str, int]
#: Exceptions of a non-blocking socket (plain or TLS) that only mean "not now".
NOT_NOW = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(eq=False, slots=True)
class Job(Generic[T]):
    """One POST to make; ``context`` comes back with its result."""

    url: str
    body: bytes
    headers: dict[str, str]
    #: Seconds the whole attempt may take, once started (jobs beyond ``max_active`` wait).
    timeout: float
    context: T
    #: The ``time.monotonic()`` by which it must start; one still waiting then is not sent, and
    #: goes to ``late`` instead.
    start_by: float = float("inf")
    #: When it started (``time.monotonic()``), set by the loop.
    started: float = 0.0


@dataclass(eq=False, slots=True)
class _Exchange(Generic[T]):
    job: Job[T]
    parser: Parse[Response]
    unsent: memoryview
    deadline: float


@dataclass(eq=False, slots=True)
class _Connection(Generic[T]):
    sock: socket.socket
    key: PoolKey
    events: int = selectors.EVENT_READ
    exchange: _Exchange[T] | None = None


@dataclass(eq=False, slots=True)
class _Opened(Generic[T]):
    """A helper thread's answer: a new connection for ``job``, or why there is none."""

    job: Job[T]
    key: PoolKey
    request: bytes
    sock: socket.socket | None
    error: Exception | None


class Multiplexer(Generic[T]):
    """Makes POSTs on one thread, up to ``max_active`` at once (the rest wait their turn in
    order), and hands each result to ``done`` on that thread; a job that could not start by its
    ``start_by`` goes to ``late`` there, unsent."""

    def __init__(
        self,
        transport: Transport,
        *,
        max_active: int,
        connect_timeout: float,
        done: Callable[[T, SendResult], None],
        late: Callable[[T], None] = lambda context: None,
        name: str = "kaizen-webhooks-sender",
    ) -> None:
        self.transport = transport
        self.max_active = max_active
        self.connect_timeout = connect_timeout
        self._done = done
        self._late = late
        self._inbox: queue.SimpleQueue[Job[T] | _Opened[T]] = queue.SimpleQueue()
        self._waiting: deque[Job[T]] = deque()  # sent here, not started
        self._jobs: set[Job[T]] = set()  # every job not finished
        self._active = 0  # jobs started: connecting or exchanging
        self._idle: OrderedDict[PoolKey, list[_Connection[T]]] = OrderedDict()
        self._deadlines: list[tuple[float, int, _Connection[T], _Exchange[T]]] = []
        self._sequence = 0
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._signalled = False
        self._selector.register(self._wake_in, selectors.EVENT_READ, None)
        self._helpers = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_active, thread_name_prefix=f"{name}-connect"
        )
        self._stopping = False
        self._stop_by = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    @property
    def load(self) -> int:
        """Jobs sent here and not finished (read without a lock: a hint)."""
        return len(self._jobs) + self._inbox.qsize()

    def start(self) -> None:
        """Start the loop's thread."""
        self._started = True
        self._thread.start()

    def send(self, job: Job[T]) -> None:
        """Make ``job``'s POST (from any thread); its result goes to ``done``."""
        if threading.get_ident() == self._thread.ident:
            self._jobs.add(job)
            self._waiting.append(job)
            return
        self._inbox.put(job)
        self._signal()

    def stop(self, timeout: float) -> list[T]:
        """Start nothing new, let the exchanges under way finish for up to ``timeout`` seconds,
        then close every connection; the contexts of the jobs not finished come back."""
        self._stop_by = time.monotonic() + timeout
        self._stopping = True
        self._signal()
        if self._started:
            self._thread.join(timeout + 1.0)
        self._helpers.shutdown(wait=False, cancel_futures=True)
        left = [job.context for job in self._jobs.copy()]  # a copy: the loop may still run
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Opened):
                if item.sock is not None:
                    item.sock.close()
            else:
                left.append(item.context)
        self._jobs.clear()
        return left

    # The loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not (self._stopping and (not self._active or time.monotonic() >= self._stop_by)):
                try:
                    self._turn()
                except Exception:  # a defect: the other exchanges carry on
                    logger.exception("Webhook sender: unexpected error")
        finally:
            self._close_all()

    def _turn(self) -> None:
        """Wait for the next events (or deadline), and act on them."""
        for key, mask in self._selector.select(self._timeout()):
            connection = key.data
            if connection is None:
                self._drain_wake()
            else:
                self._ready(connection, mask)
        self._take_inbox()
        self._expire(time.monotonic())
        self._start_waiting()

    def _timeout(self) -> float | None:
        if self._waiting and self._active < self.max_active and not self._stopping:
            return 0.0
        if self._stopping:
            return max(0.0, min(self._stop_by - time.monotonic(), 0.1))
        if self._deadlines:
            return max(0.0, self._deadlines[0][0] - time.monotonic())
        return None

    def _signal(self) -> None:
        if not self._signalled:
            self._signalled = True
            with contextlib.suppress(OSError):  # full: the loop is awake anyway
                self._wake_out.send(b"\0")

    def _drain_wake(self) -> None:
        # Drained first, then cleared: a flag still set means a byte is on its way.
        with contextlib.suppress(OSError):
            while self._wake_in.recv(4096):
                pass
        self._signalled = False

    def _take_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Opened):
                self._opened(item)
            else:
                self._jobs.add(item)
                self._waiting.append(item)

    def _start_waiting(self) -> None:
        while self._waiting and self._active < self.max_active and not self._stopping:
            job = self._waiting.popleft()
            now = time.monotonic()
            if now > job.start_by:
                self._jobs.discard(job)
                try:
                    self._late(job.context)
                except Exception:
                    logger.exception("Webhook sender: handing back a late job failed")
                continue
            self._active += 1
            job.started = now  # the deadline counts from here
            self._begin(job)

    def _begin(self, job: Job[T]) -> None:
        prepared = self.transport.prepare(job.url, job.headers, job.body, job.started)
        if isinstance(prepared, SendResult):
            self._finish(job, prepared)
            return
        where, request = prepared
        key = pool_key(where)
        connection = self._take_idle(key)
        if connection is not None:
            self._exchange(connection, job, request)
        else:
            self._helpers.submit(self._open, job, key, request, where)

    def _open(self, job: Job[T], key: PoolKey, request: bytes, where: Route) -> None:
        """On a helper thread: a new connection for ``job``, handed back to the loop."""
        sock: socket.socket | None = None
        error: Exception | None = None
        try:
            sock = self.transport.open(where, job.started + job.timeout, self.connect_timeout)
            sock.setblocking(False)
        except Exception as exc:
            error = exc
        if sock is not None and not self._thread.is_alive():
            sock.close()  # the loop has ended
            return
        self._inbox.put(_Opened(job, key, request, sock, error))
        self._signal()

    def _opened(self, opened: _Opened[T]) -> None:
        if opened.sock is None:
            assert opened.error is not None
            self._finish(opened.job, self._failure(opened.job, opened.error))
            return
        connection: _Connection[T] = _Connection(opened.sock, opened.key)
        self._selector.register(opened.sock, selectors.EVENT_READ, connection)
        self._exchange(connection, opened.job, opened.request)

    def _exchange(self, connection: _Connection[T], job: Job[T], request: bytes) -> None:
        parser = parse_response(self.transport.max_response_bytes)
        next(parser)  # to its first need for bytes
        deadline = job.started + job.timeout
        exchange = _Exchange(job, parser, memoryview(request), deadline)
        connection.exchange = exchange
        self._sequence += 1
        heapq.heappush(self._deadlines, (deadline, self._sequence, connection, exchange))
        if len(self._deadlines) > 4 * max(self._active, 16):
            # Deadlines of finished exchanges are dropped lazily, and in bulk here, so that
            # they do not keep requests in memory until their time.
            self._deadlines = [entry for entry in self._deadlines if entry[2].exchange is entry[3]]
            heapq.heapify(self._deadlines)
        self._write(connection, exchange)

    def _ready(self, connection: _Connection[T], mask: int) -> None:
        exchange = connection.exchange
        if exchange is None:  # idle, and readable: closed by the receiver (or garbage)
            self._drop_idle(connection)
        elif exchange.unsent:
            self._write(connection, exchange)
        else:
            self._read(connection, exchange)

    def _write(self, connection: _Connection[T], exchange: _Exchange[T]) -> None:
        try:
            while exchange.unsent:
                sent = connection.sock.send(exchange.unsent)
                exchange.unsent = exchange.unsent[sent:]
        except ssl.SSLWantReadError:
            self._want(connection, selectors.EVENT_READ)  # TLS needs to read first
            return
        except NOT_NOW:
            # Only room to write is waited for: a receiver that answers early and stops
            # reading would otherwise wake the loop without end, until the deadline.
            self._want(connection, selectors.EVENT_WRITE)
            return
        except OSError as exc:
            self._fail(connection, exchange, exc)
            return
        self._want(connection, selectors.EVENT_READ)

    def _read(self, connection: _Connection[T], exchange: _Exchange[T]) -> None:
        sock = connection.sock
        while True:
            try:
                chunk = sock.recv(RECV_BYTES)
            except NOT_NOW:
                return
            except OSError as exc:
                self._feed(connection, exchange, error=exc)
                return
            if not self._feed(connection, exchange, chunk=chunk):
                return
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return  # more on the wire wakes the loop again

    def _feed(
        self,
        connection: _Connection[T],
        exchange: _Exchange[T],
        *,
        chunk: bytes = b"",
        error: Exception | None = None,
    ) -> bool:
        """Give the parser ``chunk`` (or ``error``); False once the exchange is over."""
        try:
            if error is not None:
                exchange.parser.throw(error)
            else:
                exchange.parser.send(chunk)
        except StopIteration as answered:
            self._answered(connection, exchange, answered.value)
            return False
        except Exception as exc:
            self._fail(connection, exchange, exc)
            return False
        return True

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _deadline, _n, connection, exchange = heapq.heappop(deadlines)
            if connection.exchange is exchange:
                self._feed(connection, exchange, error=TimeoutError("the deadline passed"))

    def _answered(
        self, connection: _Connection[T], exchange: _Exchange[T], response: Response
    ) -> None:
        connection.exchange = None
        if response.reusable and not self._stopping:
            self._keep_idle(connection)
        else:
            self._close(connection)
        self._finish(exchange.job, result_of(response, exchange.job.started))

    def _fail(self, connection: _Connection[T], exchange: _Exchange[T], exc: Exception) -> None:
        connection.exchange = None
        self._close(connection)
        self._finish(exchange.job, self._failure(exchange.job, exc))

    def _failure(self, job: Job[T], exc: Exception) -> SendResult:
        try:
            return failure_of(exc, job.started, job.timeout)
        except Exception as unexpected:
            logger.error("Webhook to %s: unexpected error", job.url, exc_info=unexpected)
            return failure(job.started, f"internal error: {type(unexpected).__name__}")

    def _finish(self, job: Job[T], result: SendResult) -> None:
        self._active -= 1
        self._jobs.discard(job)
        try:
            self._done(job.context, result)
        except Exception:
            logger.exception("Webhook sender: handling a result failed")

    # Connections ------------------------------------------------------------------------------

    def _want(self, connection: _Connection[T], events: int) -> None:
        if connection.events != events:
            connection.events = events
            self._selector.modify(connection.sock, events, connection)

    def _take_idle(self, key: PoolKey) -> _Connection[T] | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        self._idle.move_to_end(key)
        return idle.pop()

    def _keep_idle(self, connection: _Connection[T]) -> None:
        idle = self._idle.setdefault(connection.key, [])
        self._idle.move_to_end(connection.key)
        if len(idle) >= self.transport.pool_size:
            self._close(connection)
            return
        idle.append(connection)
        while len(self._idle) > MAX_DESTINATIONS:
            _key, dropped = self._idle.popitem(last=False)
            for old in dropped:
                self._close(old)

    def _drop_idle(self, connection: _Connection[T]) -> None:
        idle = self._idle.get(connection.key)
        if idle is not None and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.key]
        self._close(connection)

    def _close(self, connection: _Connection[T]) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()

    def _close_all(self) -> None:
        for _key, selected in list(self._selector.get_map().items()):
            if selected.data is not None:
                selected.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        self._idle.clear()
        self._wake_in.close()
        self._wake_out.close()
