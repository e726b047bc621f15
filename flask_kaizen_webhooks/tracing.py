"""OpenTelemetry tracing of webhook attempts, when ``opentelemetry-api`` is installed.

An asynchronous event keeps the W3C ``traceparent`` of the span current where it was fired
(:func:`current_trace_parent`); each attempt of its deliveries gets a span of kind CLIENT,
``webhook <topic>``, in that trace (a new trace when there was none). A synchronous topic's or
a test's attempts are children of the span current in the caller's thread. With
``KAIZEN_WEBHOOKS_PROPAGATE_TRACE`` each POST carries its attempt span's ``traceparent`` (and
``tracestate``, if any).

A span's attributes say which delivery of which registration and topic it is, its attempt's
number and outcome, the answer's status and the receiver's host and port: never the URL (its
query may hold a token), the secret, the payload or the answer.

Without ``opentelemetry-api``, or without an SDK installed to record spans (and nothing to
pass on to the receiver), every attempt gets :data:`NO_SPAN`, whose methods do nothing.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

from .version import __version__

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import (
        NoOpTracerProvider,
        ProxyTracerProvider,
        Span,
        SpanKind,
        Status,
        StatusCode,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the default install: no tracing
    AVAILABLE = False
else:
    AVAILABLE = True
    _TRACER = trace.get_tracer("flask_kaizen_webhooks", __version__)
    _PROPAGATOR = TraceContextTextMapPropagator()
    #: Providers that record nothing: the API's own while no SDK is set up.
    _SILENT = (ProxyTracerProvider, NoOpTracerProvider)

logger = logging.getLogger("flask_kaizen_webhooks")

#: The outcome of a successful attempt (see ``delivery.outcomes.outcome_of``).
SUCCESS: Final = "success"
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class Current:
    """The parent of a span started in the caller's thread: the span current there."""


#: A synchronous attempt's parent: the caller's current span.
CURRENT: Final = Current()


def current_trace_parent() -> str | None:
    """The W3C ``traceparent`` of the span current in this thread (``00-<trace id>-<span
    id>-<flags>``), if there is a valid one: what an asynchronous event keeps for its attempts.
    None without OpenTelemetry."""
    if not AVAILABLE:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


class AttemptSpan:
    """An attempt's span: :meth:`start` as its request really goes, :meth:`end` with its
    result. This one is none: tracing is off, and it does nothing."""

    __slots__ = ()

    def start(self) -> None:
        """Start the span now (and put its trace context in the request's headers, if they
        carry it)."""

    def end(
        self,
        outcome: str | None = None,
        status_code: int | None = None,
        elapsed: float | None = None,
    ) -> None:
        """End the span: with what the attempt came to (``outcome``, the answer's
        ``status_code``), lasting ``elapsed`` seconds from its start; or, without an
        ``outcome``, now and as it is (the request was given back unanswered). Only the first
        call counts; without a start it does nothing."""


#: The span of every attempt while tracing is off.
NO_SPAN: Final = AttemptSpan()


def attempt_span(
    *,
    topic: str,
    registration_id: str,
    delivery_id: str,
    number: int,
    url: str,
    parent: str | Current | None,
    headers: dict[str, str] | None,
) -> AttemptSpan:
    """The span of attempt ``number`` of a delivery, not started yet; its parent is the
    ``traceparent`` ``parent``, a new trace (None) or :data:`CURRENT`. ``headers``: the
    request's, which get its ``traceparent`` as it starts; None: they get none.

    :data:`NO_SPAN` when nothing would come of a span: no OpenTelemetry, or no SDK to record it
    and no trace to pass on."""
    if not AVAILABLE:
        return NO_SPAN
    if isinstance(trace.get_tracer_provider(), _SILENT) and (headers is None or parent is None):
        return NO_SPAN
    address, port = server_of(url)
    attributes: dict[str, str | int] = {
        "webhook.topic": topic,
        "webhook.registration_id": registration_id,
        "webhook.delivery_id": delivery_id,
        "webhook.attempt": number,
        "http.request.method": "POST",
        "server.address": address,
        "server.port": port,
    }
    return _Traced(f"webhook {topic}", attributes, parent, headers)


class _Traced(AttemptSpan):
    """A span through the OpenTelemetry API."""

    __slots__ = ("_attributes", "_headers", "_name", "_parent", "_span", "_started")

    def __init__(
        self,
        name: str,
        attributes: dict[str, str | int],
        parent: str | Current | None,
        headers: dict[str, str] | None,
    ) -> None:
        self._name = name
        self._attributes = attributes
        self._parent = parent
        self._headers = headers
        self._span: Span | None = None
        self._started = 0

    def start(self) -> None:
        if self._span is not None:
            return
        try:
            parent = self._parent
            context: Context | None
            if isinstance(parent, Current):
                context = None  # the caller's
            elif parent is None:
                context = Context()  # a new trace (not whatever this thread holds)
            else:
                context = _PROPAGATOR.extract({"traceparent": parent})
            self._started = time.time_ns()
            self._span = _TRACER.start_span(
                self._name,
                context=context,
                kind=SpanKind.CLIENT,
                attributes=self._attributes,
                start_time=self._started,
            )
            if self._headers is not None:
                _PROPAGATOR.inject(self._headers, context=trace.set_span_in_context(self._span))
        except Exception:  # tracing never stops a webhook
            logger.exception("Tracing a webhook attempt failed")

    def end(
        self,
        outcome: str | None = None,
        status_code: int | None = None,
        elapsed: float | None = None,
    ) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        try:
            if outcome is not None and span.is_recording():
                span.set_attribute("webhook.outcome", outcome)
                if status_code is not None:
                    span.set_attribute("http.response.status_code", status_code)
                if outcome != SUCCESS:
                    span.set_status(Status(StatusCode.ERROR, outcome))
            ended = None if elapsed is None else self._started + int(elapsed * 1e9)
            span.end(end_time=ended)
        except Exception:
            logger.exception("Tracing a webhook attempt failed")


@lru_cache(maxsize=1024)
def server_of(url: str) -> tuple[str, int]:
    """The host and port ``url`` goes to, nothing else of it."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a port: the attempt fails on its own, its span says no port
        port = None
    return (parts.hostname or "", port or DEFAULT_PORTS.get(parts.scheme.lower(), 0))
