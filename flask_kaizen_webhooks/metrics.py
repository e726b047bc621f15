"""Prometheus metrics of what each process does: the counters, histograms and gauge it updates
as it works, through the optional ``prometheus-client`` (the ``[metrics]`` extra).

Every app of a process shares one set of instruments, registered in prometheus-client's
default registry (in its multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set). What the
database holds (deliveries by status, the oldest due work, registrations by state) is read at
scrape time instead, by :mod:`.web.metrics`, so that every process reports the same truth.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from .errors import ConfigurationError, MetricsUnavailable

logger = logging.getLogger("flask_kaizen_webhooks")

#: What to install for metrics, told whenever they are asked for without it.
INSTALL = MetricsUnavailable.INSTALL

#: Where prometheus-client's multiprocess mode keeps every process's values.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)
ENQUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class DisabledReason(enum.StrEnum):
    """Why a registration was disabled (the ``reason`` label)."""

    #: Its receiver answered 410 Gone.
    GONE = "gone"
    #: Too many of its deliveries in a row failed for good.
    FAILING = "failing"
    #: Its owner disabled it (the API or the portal).
    OWNER = "owner"
    #: An operator disabled it (``flask webhooks disable``).
    OPERATOR = "operator"


def prometheus_available() -> bool:
    """Whether prometheus-client can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class Metrics(Protocol):
    """What the engines and the API tell the metrics (nothing, when they are off)."""

    def enqueued(self, topic: str, count: int) -> None:
        """``count`` deliveries of ``topic`` stored (committed)."""

    def enqueue_took(self, topic: str, seconds: float) -> None:
        """The host's call storing an event of ``topic`` took ``seconds``."""

    def attempted(self, topic: str, outcome: str, seconds: float, registration_id: str) -> None:
        """An attempt of ``topic`` to a registration came to ``outcome`` after ``seconds``."""

    def delivered(self, topic: str, seconds: float) -> None:
        """A delivery of ``topic`` succeeded ``seconds`` after it was queued."""

    def disabled(self, reason: DisabledReason) -> None:
        """A registration was disabled for ``reason``."""

    def in_flight(self, change: int) -> None:
        """``change`` more (or fewer) attempts are under way in this process."""


class NoMetrics:
    """Metrics off: every call does nothing."""

    def enqueued(self, topic: str, count: int) -> None:
        return None

    def enqueue_took(self, topic: str, seconds: float) -> None:
        return None

    def attempted(self, topic: str, outcome: str, seconds: float, registration_id: str) -> None:
        return None

    def delivered(self, topic: str, seconds: float) -> None:
        return None

    def disabled(self, reason: DisabledReason) -> None:
        return None

    def in_flight(self, change: int) -> None:
        return None


Method = TypeVar("Method", bound=Callable[..., None])


def quietly(method: Method) -> Method:
    """``method``, whose failure (a full disk under multiprocess mode, say) is logged, once
    per process, instead of raising into the host's request or the engine's bookkeeping."""

    @functools.wraps(method)
    def counting(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            if method.__name__ not in _FAILED:
                _FAILED.add(method.__name__)
                logger.exception("Metrics: counting %s failed; it is left out", method.__name__)

    return cast(Method, counting)


#: The methods whose failure was logged already.
_FAILED: set[str] = set()


class PrometheusMetrics:
    """The process's instruments (made once, on first use), with each label's child kept at
    hand: a webhook's bookkeeping costs a dictionary lookup and an increment."""

    _lock = threading.Lock()
    _instruments: dict[str, Any] | None = None

    def __init__(self, *, per_registration: bool = False) -> None:
        self._per_registration = per_registration
        self._made = self.instruments()
        self._children: dict[tuple[str, ...], Any] = {}
        for reason in DisabledReason:  # shown at 0 from the start, so a first one is a rise
            self._child("disabled", reason.value)

    @classmethod
    def instruments(cls) -> dict[str, Any]:
        """The process's instruments by name, made and registered on first call."""
        with cls._lock:
            if cls._instruments is None:
                cls._instruments = _make_instruments()
            return cls._instruments

    def _child(self, name: str, *labels: str) -> Any:
        key = (name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._made[name].labels(*labels)
        return child

    @quietly
    def enqueued(self, topic: str, count: int) -> None:
        self._child("enqueued", topic).inc(count)

    @quietly
    def enqueue_took(self, topic: str, seconds: float) -> None:
        self._child("enqueue", topic).observe(seconds)

    @quietly
    def attempted(self, topic: str, outcome: str, seconds: float, registration_id: str) -> None:
        self._child("attempts", topic, outcome).inc()
        self._child("duration", topic).observe(seconds)
        if self._per_registration:
            result = "success" if outcome == "success" else "failure"
            self._child("by_registration", registration_id, result).inc()

    @quietly
    def delivered(self, topic: str, seconds: float) -> None:
        self._child("latency", topic).observe(max(0.0, seconds))

    @quietly
    def disabled(self, reason: DisabledReason) -> None:
        self._child("disabled", reason.value).inc()

    @quietly
    def in_flight(self, change: int) -> None:
        self._made["in_flight"].inc(change)


def _make_instruments() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "enqueued": Counter(
            "kaizen_webhooks_deliveries_enqueued",
            "Asynchronous deliveries stored in the outbox, by topic.",
            ["topic"],
        ),
        "attempts": Counter(
            "kaizen_webhooks_attempts",
            "Finished webhook attempts (synchronous and asynchronous topics), by topic and "
            "outcome.",
            ["topic", "outcome"],
        ),
        "by_registration": Counter(
            "kaizen_webhooks_registration_attempts",
            "Finished webhook attempts by registration and result (success or failure).",
            ["registration", "result"],
        ),
        "disabled": Counter(
            "kaizen_webhooks_registrations_disabled",
            "Registrations disabled, by reason (gone, failing, owner, operator).",
            ["reason"],
        ),
        "duration": Histogram(
            "kaizen_webhooks_attempt_duration_seconds",
            "Time of one webhook attempt on the wire, by topic.",
            ["topic"],
            buckets=ATTEMPT_BUCKETS,
        ),
        "latency": Histogram(
            "kaizen_webhooks_delivery_latency_seconds",
            "Time from an asynchronous delivery being queued to its successful attempt.",
            ["topic"],
            buckets=LATENCY_BUCKETS,
        ),
        "enqueue": Histogram(
            "kaizen_webhooks_enqueue_seconds",
            "Time the host's call spent storing an asynchronous event, by topic.",
            ["topic"],
            buckets=ENQUEUE_BUCKETS,
        ),
        "in_flight": Gauge(
            "kaizen_webhooks_attempts_in_flight",
            "Webhook attempts under way in this process (summed over live processes).",
            multiprocess_mode="livesum",
        ),
    }


NO_METRICS = NoMetrics()


def metrics_for(wanted: bool | None, *, per_registration: bool = False) -> Metrics:
    """The metrics an app with ``KAIZEN_WEBHOOKS_METRICS = wanted`` records: on when asked
    (then prometheus-client must be installed) or, while None, when it is installed; attempts
    are counted by registration too if ``per_registration``."""
    if wanted is False:
        return NO_METRICS
    if not prometheus_available():
        if wanted:
            raise ConfigurationError(
                "KAIZEN_WEBHOOKS_METRICS", f"metrics need prometheus-client: {INSTALL}"
            )
        return NO_METRICS
    try:
        multiprocess_directory()
        return PrometheusMetrics(per_registration=per_registration)
    except OSError as exc:  # the multiprocess directory missing, or not writable
        raise ConfigurationError(
            "KAIZEN_WEBHOOKS_METRICS",
            f"metrics cannot be counted: {exc} (or set KAIZEN_WEBHOOKS_METRICS = False)",
        ) from None


def multiprocess_directory() -> str | None:
    """The directory of prometheus-client's multiprocess mode, if one is set; a
    :class:`NotADirectoryError` saying what to do when it is not a directory."""
    directory = os.environ.get(MULTIPROCESS_DIR)  # set, even empty: multiprocess mode
    if directory is not None and not os.path.isdir(directory):
        raise NotADirectoryError(
            f"{MULTIPROCESS_DIR}={directory!r} is not a directory: create it, writable by every "
            "process, before they start"
        )
    return directory
