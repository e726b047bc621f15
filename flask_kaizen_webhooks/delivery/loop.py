"""The thread of a :class:`~.client.Client`: a ``CurlMulti`` driven by ``socket_action`` on
``epoll``, which looks hosts up through the guard's pins and carries many transfers at once."""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Any

import pycurl

from ..errors import ForbiddenDestination
from ..guard import IPAddress
from .lookups import Pins
from .transfer import (
    ClientOptions,
    Job,
    SendResult,
    Sink,
    Transfer,
    failure,
    header_lines,
    open_socket,
    result_of,
    route,
)

logger = logging.getLogger("flask_kaizen_webhooks")

#: Idle connections libcurl keeps, at most.
MAX_CONNECTIONS = 256
#: Seconds a blocking call waits beyond its attempts' deadline (which libcurl keeps) for their
#: results to come back from the client's thread.
GRACE = 0.25


def call_done(job: Job[Any], result: SendResult) -> None:
    try:
        job.done(job.context, result)
    except Exception:
        logger.exception("Webhook client: handling a result failed")


class Loop:
    """One run of a client's thread: a ``CurlMulti`` driven by ``socket_action`` on ``epoll``
    (or ``poll``), and a socket that wakes it when jobs arrive. Everything here but
    :meth:`take`, :meth:`stop` and :attr:`load` runs on that thread."""

    def __init__(self, options: ClientOptions, pins: Pins) -> None:
        self.options = options
        self.pins = pins
        self.taking = True
        self.ended = False
        self._lock = threading.Lock()  # taking, and the set of jobs
        self._inbox: queue.SimpleQueue[Job[Any] | tuple[Transfer, Any]] = queue.SimpleQueue()
        self._jobs: set[Job[Any]] = set()  # every job taken and not finished
        self._waiting: deque[Job[Any]] = deque()
        self._looking_up: set[Transfer] = set()
        self._active = 0  # started: looking up or with libcurl
        self._idle: list[tuple[pycurl.Curl, Sink]] = []
        self._sinks: dict[pycurl.Curl, Sink] = {}  # each handle in use, and its answer
        self._watched: dict[int, int] = {}  # each socket libcurl watches, and for which events
        self._stop_by: float | None = None
        self._poller = Poller()
        self._wake_in, self._wake_out = socket.socketpair()
        try:
            for end in (self._wake_in, self._wake_out):
                end.setblocking(False)
            self._poller.register(self._wake_in.fileno(), select.POLLIN)
            self._multi = pycurl.CurlMulti()
            self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
            self._multi.setopt(pycurl.M_MAXCONNECTS, MAX_CONNECTIONS)
            self._thread = threading.Thread(target=self._run, name=options.name, daemon=True)
            self._thread.start()
        except BaseException:
            self._close()
            raise

    @property
    def load(self) -> int:
        return len(self._jobs)

    def take(self, jobs: Sequence[Job[Any]]) -> bool:
        """Take ``jobs`` (from any thread); False once the loop is stopping."""
        with self._lock:
            if not self.taking:
                return False
            self._jobs.update(jobs)
        if threading.current_thread() is self._thread:  # from a ``done``: no need to wake
            self._waiting.extend(jobs)
            return True
        for job in jobs:
            self._inbox.put(job)
        self._signal()
        return True

    def stop(self, timeout: float) -> list[Job[Any]]:
        with self._lock:
            self.taking = False
        self._stop_by = time.monotonic() + timeout
        self._signal()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout + GRACE)
        with self._lock:  # what is handed back is finished here no more
            left, self._jobs = list(self._jobs), set()
        self._count_ended(sum(1 for job in left if job.started))
        return left

    # The loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not (self._stop_by is not None and (not self._active or self._past_stop())):
                try:
                    self._turn()
                except Exception:  # a defect: the other attempts carry on
                    logger.exception("Webhook client: unexpected error")
        finally:
            self._close()

    def _past_stop(self) -> bool:
        return self._stop_by is not None and time.monotonic() >= self._stop_by

    def _turn(self) -> None:
        wake = self._wake_in.fileno()
        multi = self._multi
        for fd, mask in self._poller.poll(self._wait()):
            if fd == wake:
                self._drain_wake()
                continue
            flags = (pycurl.CSELECT_IN if mask & select.POLLIN else 0) | (
                pycurl.CSELECT_OUT if mask & select.POLLOUT else 0
            )
            if mask & (select.POLLERR | select.POLLHUP):
                flags |= pycurl.CSELECT_ERR
            multi.socket_action(fd, flags)
        self._take_inbox()
        now = time.monotonic()
        for transfer in [t for t in self._looking_up if t.ends <= now]:
            self._looking_up.discard(transfer)
            host = transfer.route.host
            self._end(transfer, f"timed out: resolving {host!r} did not finish in time", True)
        self._start_waiting()
        if multi.timeout() == 0:  # libcurl's own timers (deadlines, new transfers) are due
            multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        self._collect()

    def _wait(self) -> float | None:
        """Seconds until the loop has something to do without being woken."""
        if self._waiting and self._active < self.options.max_active and self.taking:
            return 0.0
        times = [t.ends for t in self._looking_up]
        curl = self._multi.timeout()
        if curl >= 0:
            times.append(time.monotonic() + curl / 1000)
        if self._stop_by is not None:
            times.append(self._stop_by)
        return None if not times else max(0.0, min(times) - time.monotonic())

    def _signal(self) -> None:
        with contextlib.suppress(OSError):  # full, or closed: the loop is awake, or gone
            self._wake_out.send(b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_in.recv(4096):
                pass

    def _on_socket(self, what: int, fd: int, _multi: Any, _data: Any) -> None:
        """libcurl says which events of ``fd`` to wait for (or to forget it)."""
        watched = self._watched
        try:
            if what == pycurl.POLL_REMOVE:
                if watched.pop(fd, None) is not None:
                    self._poller.unregister(fd)
                return
            events = (select.POLLIN if what & pycurl.POLL_IN else 0) | (
                select.POLLOUT if what & pycurl.POLL_OUT else 0
            )
            before = watched.get(fd)
            if before != events:
                try:  # a number libcurl used before may stand for a new socket now
                    self._poller.modify(fd, events) if before else self._poller.register(fd, events)
                except FileNotFoundError:
                    self._poller.register(fd, events)
                except FileExistsError:
                    self._poller.modify(fd, events)
            watched[fd] = events
        except (ValueError, OSError):
            logger.exception("Webhook client: socket %d could not be watched", fd)

    def _take_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Job):
                self._waiting.append(item)
            else:
                self._resolved(*item)

    # Attempts -------------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        while self._waiting and self._active < self.options.max_active and self.taking:
            job = self._waiting.popleft()
            now = time.monotonic()
            if now >= min(job.start_by, job.end_by):
                if self._forget(job):
                    if job.late is None:
                        call_done(job, failure(now, "timed out before sending", timed_out=True))
                    else:
                        try:
                            job.late(job.context)
                        except Exception:
                            logger.exception("Webhook client: handing back a late job failed")
                continue
            self._active += 1
            job.started = now  # the deadline counts from here
            if self.options.count_attempts is not None:
                self.options.count_attempts(1)
            try:
                self._begin(job, min(now + job.timeout, job.end_by))
            except Exception as exc:  # a defect: this attempt fails, the others carry on
                logger.exception("Webhook to %s: unexpected error", job.url)
                self._finish(job, failure(now, f"internal error: {type(exc).__name__}"))

    def _begin(self, job: Job[Any], ends: float) -> None:
        job.starting()
        try:
            where = route(job.url)
        except ValueError as exc:
            self._finish(job, failure(job.started, f"invalid URL: {exc}"))
            return
        transfer = Transfer(job, where, ends)
        pins = self.pins
        try:
            if self.options.proxy is not None:  # the proxy looks the name up, and judges it
                pins.judge_unresolved(where.host, where.port, where.literal)
                self._add(transfer, None)
                return
            address = pins.pinned(where.host, where.port, where.literal)
        except ForbiddenDestination as exc:
            self._refuse(transfer, exc.reason)
            return
        if address is not None:
            self._add(transfer, address)
            return
        future = pins.lookups.look_up(where.host, where.port)
        self._looking_up.add(transfer)
        future.add_done_callback(partial(self._looked_up, transfer))

    def _looked_up(self, transfer: Transfer, future: Any) -> None:
        """On the lookup's thread (or this one): the answer goes to the loop."""
        self._inbox.put((transfer, future))
        self._signal()

    def _resolved(self, transfer: Transfer, future: Any) -> None:
        if transfer not in self._looking_up:
            return  # timed out already
        self._looking_up.discard(transfer)
        where = transfer.route
        try:
            address = self.pins.pin(where.host, where.port, future.result())
            self._add(transfer, address)
        except ForbiddenDestination as exc:
            self._refuse(transfer, exc.reason)
        except OSError as exc:  # the receiver's name resolves to nothing: not the guard's doing
            self._end(transfer, f"cannot resolve {where.host!r}: {exc}")
        except Exception as exc:
            logger.exception("Webhook to %s: unexpected error", where.host)
            self._end(transfer, f"internal error: {type(exc).__name__}")

    def _refuse(self, transfer: Transfer, reason: str) -> None:
        logger.warning("Webhook to %s refused before connecting: %s", transfer.route.host, reason)
        self._end(transfer, f"forbidden destination: {reason}")

    def _add(self, transfer: Transfer, address: IPAddress | None) -> None:
        """Hand ``transfer`` to libcurl, pinned to ``address``."""
        job, where = transfer.job, transfer.route
        remaining = transfer.ends - time.monotonic()
        if remaining <= 0:
            self._end(transfer, "timed out: no time left to connect", True)
            return
        try:
            lines = header_lines(job.headers)
        except ValueError as exc:
            self._end(transfer, f"invalid request: {exc}")
            return
        handle, sink = self._idle.pop() if self._idle else self._new_handle()
        try:
            handle.setopt(pycurl.URL, where.url)
            handle.setopt(pycurl.HTTPHEADER, lines)
            handle.setopt(pycurl.POSTFIELDS, job.body)
            handle.setopt(pycurl.TIMEOUT_MS, max(1, int(remaining * 1000)))
            connect = min(remaining, self.options.connect_timeout)
            handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(connect * 1000)))
            if address is None or where.literal is not None:
                handle.setopt(pycurl.RESOLVE, [])
            else:  # "+": the entry leaves libcurl's cache like any other, when it is old
                shown = f"[{address}]" if address.version == 6 else str(address)
                handle.setopt(pycurl.RESOLVE, [f"+{where.host}:{where.port}:{shown}"])
            sink.reset(transfer)
            self._sinks[handle] = sink
            self._multi.add_handle(handle)
        except Exception:
            self._sinks.pop(handle, None)
            handle.close()
            raise

    def _new_handle(self) -> tuple[pycurl.Curl, Sink]:
        options = self.options
        handle, sink = pycurl.Curl(), Sink(options.max_response_bytes)
        for option, value in (
            (pycurl.NOSIGNAL, 1),
            (pycurl.POST, 1),
            (pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
            (pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
            (pycurl.FOLLOWLOCATION, 0),
            (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
            (pycurl.HTTP_CONTENT_DECODING, 0),
            (pycurl.PATH_AS_IS, 1),
            (pycurl.MAXFILESIZE_LARGE, options.max_response_bytes),
            (pycurl.WRITEFUNCTION, sink.write),
            (pycurl.OPENSOCKETFUNCTION, partial(open_socket, options, sink)),
        ):
            handle.setopt(option, value)
        if options.proxy is not None:
            handle.setopt(pycurl.PROXY, options.proxy)
            handle.setopt(pycurl.HTTPPROXYTUNNEL, 1)
            handle.setopt(pycurl.NOPROXY, "")  # no exceptions, whatever the environment says
        else:
            handle.setopt(pycurl.NOPROXY, "*")
        if options.ca_bundle is not None:
            handle.setopt(pycurl.CAINFO, options.ca_bundle)
        return handle, sink

    def _collect(self) -> None:
        """Finish every transfer libcurl has done with."""
        while True:
            queued, succeeded, failed = self._multi.info_read()
            for handle in succeeded:
                self._done(handle, 0, "")
            for handle, code, message in failed:
                self._done(handle, code, message)
            if not queued:
                return

    def _done(self, handle: pycurl.Curl, code: int, message: str) -> None:
        sink = self._sinks.pop(handle)
        transfer = sink.transfer
        assert transfer is not None
        try:
            result = result_of(transfer, sink, handle, code, message)
        except Exception as exc:
            logger.exception("Webhook to %s: unexpected error", transfer.route.host)
            result = failure(transfer.job.started, f"internal error: {type(exc).__name__}")
        sink.reset(None)
        try:
            self._multi.remove_handle(handle)
            self._idle.append((handle, sink))
        except pycurl.error:
            logger.exception("Webhook client: a handle could not be removed")
        self._finish(transfer.job, result)

    def _end(self, transfer: Transfer, error: str, timed_out: bool = False) -> None:
        self._finish(transfer.job, failure(transfer.job.started, error, timed_out=timed_out))

    def _forget(self, job: Job[Any]) -> bool:
        """Drop ``job`` from the jobs in hand; False if it was handed back at a stop."""
        with self._lock:
            if job not in self._jobs:
                return False
            self._jobs.discard(job)
        if job.started:
            self._count_ended(1)
        return True

    def _count_ended(self, count: int) -> None:
        """Tell the client's watcher (its metrics) that ``count`` started attempts ended."""
        if count and self.options.count_attempts is not None:
            self.options.count_attempts(-count)

    def _finish(self, job: Job[Any], result: SendResult) -> None:
        self._active -= 1
        if self._forget(job):
            call_done(job, result)

    def _close(self) -> None:
        self.ended = True
        with self._lock:
            self.taking = False
        for handle, _sink in self._idle:
            handle.close()
        if hasattr(self, "_multi"):
            with contextlib.suppress(pycurl.error):
                self._multi.close()
        self._poller.close()
        self._wake_in.close()
        self._wake_out.close()


class Poller:
    """``epoll`` where there is one, ``poll`` elsewhere; timeouts in seconds."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = select.poll() if self._epoll is None else None
        what = self._epoll or self._poll
        assert what is not None
        self.register, self.modify, self.unregister = what.register, what.modify, what.unregister

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if self._epoll is not None:
            return self._epoll.poll(-1 if timeout is None else timeout)
        assert self._poll is not None
        return self._poll.poll(None if timeout is None else timeout * 1000)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
