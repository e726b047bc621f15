"""The Prometheus exposition: what this process (or, in prometheus-client's multiprocess mode,
every process writing to ``PROMETHEUS_MULTIPROC_DIR``) counted, and the gauges read from the
database at each scrape, served by :func:`metrics_view` or by a worker's own HTTP server."""

from __future__ import annotations

import glob
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Protocol, cast

from flask import Flask, Response, current_app

from ..errors import MetricsUnavailable
from ..metrics import multiprocess_directory, prometheus_available
from ..state import get_state
from ..storage import admin

logger = logging.getLogger("flask_kaizen_webhooks")

#: Seconds a scrape waits for the read another scrape is making of the database's gauges.
SHARED_READ_WAIT = 15.0


class Read:
    """One read of an app's database gauges, which the scrapes that come meanwhile wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        #: What was read; None if the database could not be read.
        self.gauges: admin.Gauges | None = None


class DatabaseGauges:
    """The gauges of an app's database, read at each scrape; the same from every process.
    Scrapes at once (several Prometheus servers, say) share one read rather than pile up."""

    _lock = threading.Lock()
    #: The read under way of each app.
    _reading: ClassVar[weakref.WeakKeyDictionary[Flask, Read]] = weakref.WeakKeyDictionary()

    def __init__(self, app: Flask) -> None:
        self._app = app

    def _gauges(self) -> admin.Gauges | None:
        """The database's gauges (None if it cannot be read), read now or by the scrape
        already reading them."""
        with self._lock:
            under_way = self._reading.get(self._app)
            if under_way is None:
                read = self._reading[self._app] = Read()
        if under_way is not None:  # a read that hangs leaves this scrape without its gauges
            under_way.done.wait(SHARED_READ_WAIT)
            return under_way.gauges
        state = get_state(self._app)
        try:
            with self._app.app_context(), state.database.independent_session() as session:
                read.gauges = admin.gauges(
                    session,
                    now=state.clock.now(),
                    every_registration_paced=state.settings.every_registration_paced,
                )
        except Exception as exc:
            logger.warning("Metrics: the database could not be read (%s)", type(exc).__name__)
        finally:
            with self._lock:
                del self._reading[self._app]
            read.done.set()
        return read.gauges

    def describe(self) -> list[Any]:
        return []  # read only at scrape time, never when registered

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(
            "kaizen_webhooks_database_up", "1 when this scrape could read the database, else 0."
        )
        read = self._gauges()
        if read is None:
            up.add_metric([], 0)
            yield up
            return
        now = get_state(self._app).clock.now()
        up.add_metric([], 1)
        yield up
        deliveries = GaugeMetricFamily(
            "kaizen_webhooks_deliveries",
            "Deliveries in the log by status (tests apart).",
            labels=["status"],
        )
        for status, count in read.deliveries.items():
            deliveries.add_metric([status], count)
        yield deliveries
        waited = 0.0 if read.oldest_due is None else (now - read.oldest_due).total_seconds()
        yield GaugeMetricFamily(
            "kaizen_webhooks_oldest_due_seconds",
            "How long the oldest due delivery (or event not fanned out) has waited; 0 if none.",
            value=max(0.0, waited),
        )
        registrations = GaugeMetricFamily(
            "kaizen_webhooks_registrations", "Registrations by state.", labels=["state"]
        )
        for registration_state, count in read.registrations.items():
            registrations.add_metric([registration_state], count)
        yield registrations
        failing = GaugeMetricFamily(
            "kaizen_webhooks_registration_consecutive_failures",
            "Deliveries in a row failed for good, for each active registration failing now.",
            labels=["registration"],
        )
        for registration_id, count in read.failing:
            failing.add_metric([registration_id], count)
        yield failing


class Scrape:
    """Everything one scrape of an app shows: the process's instruments (or every process's,
    in multiprocess mode) and the database's gauges."""

    def __init__(self, app: Flask) -> None:
        from prometheus_client import REGISTRY

        directory = multiprocess_directory()
        counted: Any = ProcessFiles(directory) if directory else REGISTRY
        self._sources = [counted, DatabaseGauges(app)]

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        for source in self._sources:
            yield from source.collect()


class ProcessFiles:
    """What every process of this machine counted into prometheus-client's multiprocess
    directory, less the live gauges of processes that were killed."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Any]:
        forget_ended_processes(self._directory)
        try:
            return self._merged()
        except FileNotFoundError:  # removed since it was listed (emptied at a deployment)
            return self._merged()

    def _merged(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = written_files(self._directory)
        merged: Iterable[Any] = MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        return merged


#: The bytes a value file starts with (its length used, then padding), once it is set up.
FILE_HEADER = 8


def written_files(directory: str) -> list[str]:
    """The directory's value files, less those a starting process has made but not yet sized:
    prometheus-client cannot read them, and they hold nothing yet."""
    files = []
    for path in glob.glob(os.path.join(directory, "*.db")):
        try:
            if os.path.getsize(path) >= FILE_HEADER:
                files.append(path)
        except FileNotFoundError:
            pass  # removed meanwhile (a killed process's live gauge, say)
    return files


def forget_ended_processes(directory: str) -> None:
    """Drop the live gauges (attempts in flight) of the processes of this machine that ended
    without saying so (killed): prometheus-client's multiprocess mode keeps them otherwise.
    Another scrape may drop them at the same time; a file that cannot go is left for later."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = path.rsplit("_", 1)[-1].removesuffix(".db")
        if not pid.isdigit() or alive(int(pid)):
            continue
        try:
            os.remove(path)
        except FileNotFoundError:
            pass  # dropped by a scrape at the same time
        except OSError as exc:
            logger.warning("Metrics: could not drop %s (%s)", path, exc)


def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def exposition(app: Flask, accept: str | None = None) -> tuple[bytes, str]:
    """The text of a scrape of ``app``, in the format ``accept`` asks for, and its type."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Scrape(app))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_view() -> Response:
    """``GET /metrics`` for the current app, mounted by the host (see
    :attr:`~flask_kaizen_webhooks.KaizenWebhooks.metrics_view`)."""
    from flask import request

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not prometheus_available():
        message = str(MetricsUnavailable("GET /metrics"))
        return Response(message + "\n", status=501, mimetype="text/plain")
    body, content_type = exposition(app, request.headers.get("Accept"))
    return Response(body, headers={"Content-Type": content_type})


class MetricsServer(Protocol):
    """A running metrics server."""

    @property
    def server_port(self) -> int:
        """The port it listens on."""

    def shutdown(self) -> None:
        """Stop serving."""


def serve(app: Flask, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``app``'s scrape at ``http://host:port/metrics`` from a thread of this process
    (a worker's); the server comes back (``shutdown()`` stops it)."""
    if not prometheus_available():
        raise MetricsUnavailable("A metrics server")
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Scrape(app))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return cast(MetricsServer, server)
