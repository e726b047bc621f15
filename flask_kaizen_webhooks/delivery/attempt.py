"""One delivery attempt, shared by every engine: send the signed request, decide what comes
next, and record it with the signals of what ended."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from blinker import NamedSignal
from flask import Flask

from .. import signals
from ..clock import isoformat
from ..metrics import DisabledReason
from ..storage import claims, results
from ..storage.rows import AttemptRecord, Claimed, Outcome
from .client import Client, SendResult
from .context import DeliveryContext
from .outcomes import describe_failure, excerpt, next_step, outcome_of
from .requests import Request, request_of

logger = logging.getLogger("flask_kaizen_webhooks")


def attempt(context: DeliveryContext, client: Client, claimed: Claimed) -> AttemptRecord:
    """Make the next attempt of a claimed delivery (whose registration is active) with
    ``client`` and decide what follows; nothing is written here (see :func:`record`)."""
    started = context.clock.now()
    request = request_of(context, claimed)
    if isinstance(request, Request):
        timeout = context.settings.async_timeout
        result = client.post(request.url, request.body, request.headers, timeout=timeout)
    else:
        result = request  # it could not be made: its own result
    return conclude(context, claimed, started, result)


def conclude(
    context: DeliveryContext, claimed: Claimed, started: datetime, result: SendResult
) -> AttemptRecord:
    """The record of an attempt started at ``started`` that came to ``result``, with what
    follows it."""
    settings = context.settings
    now = context.clock.now()
    step = next_step(
        result,
        retry_index=claimed.retry_index,
        schedule=settings.retry_schedule,
        jitter=settings.retry_jitter,
        max_retry_after=settings.max_retry_after,
        now=now,
        rng=context.rng,
    )
    return AttemptRecord(
        delivery_id=claimed.delivery_id,
        token=claimed.token,
        registration_id=claimed.registration_id,
        topic=claimed.topic,
        number=claimed.attempts + 1,
        retry_index=claimed.retry_index,
        started_at=started,
        finished_at=now,
        elapsed=result.elapsed,
        status_code=result.status_code,
        error=describe_failure(result),
        response_excerpt=excerpt(result.body),
        kind=step.kind,
        retry_at=step.retry_at,
        ordered=claimed.target is not None and claimed.target.ordered,
        outcome=outcome_of(result),
        queued_at=claimed.queued_at,
    )


def record(app: Flask, context: DeliveryContext, records: Sequence[AttemptRecord]) -> None:
    """Write attempts in one short transaction, then log them and send the signals of the
    deliveries that ended and the registrations that were disabled."""
    settings = context.settings
    with context.database.writing() as session:
        recorded = results.record_attempts(
            session,
            records,
            disable_after_failures=settings.disable_after_failures,
            disable_after=timedelta(seconds=settings.disable_after_seconds),
        )
    kept = {record.delivery_id for record in recorded.kept}
    metrics = context.metrics
    for record in records:
        if record.delivery_id not in kept:
            logger.warning(
                "Delivery %s: claim lost before its result was recorded", record.delivery_id
            )
            continue
        log_attempt(record)
        metrics.attempted(record.topic, record.outcome, record.elapsed, record.registration_id)
        if record.kind is Outcome.SUCCEEDED and record.queued_at is not None:
            metrics.delivered(record.topic, (record.finished_at - record.queued_at).total_seconds())
        if record.kind is not Outcome.RETRY:
            if record.kind is not Outcome.SUCCEEDED:
                logger.warning(
                    "Delivery %s failed for good after %d attempts: %s",
                    record.delivery_id,
                    record.number,
                    record.error,
                )
            announce(
                app,
                delivery_id=record.delivery_id,
                registration_id=record.registration_id,
                topic=record.topic,
                succeeded=record.kind is Outcome.SUCCEEDED,
                status_code=record.status_code,
                error=record.error,
                attempts=record.number,
            )
    for registration_id, reason in recorded.disabled.items():
        logger.warning("Registration %s disabled: %s", registration_id, reason)
        gone = reason == results.GONE_REASON
        metrics.disabled(DisabledReason.GONE if gone else DisabledReason.FAILING)
        _signal(signals.registration_disabled, app, registration_id=registration_id, reason=reason)


def log_attempt(record: AttemptRecord) -> None:
    """One line at INFO for a finished asynchronous attempt (see :func:`log_line`)."""
    follows = {
        Outcome.SUCCEEDED: "delivered",
        Outcome.FAILED: "failed for good",
        Outcome.GONE: "the registration is gone (410)",
    }.get(record.kind) or f"retry at {isoformat(record.retry_at)}"
    log_line(
        record.number,
        record.delivery_id,
        record.registration_id,
        record.topic,
        record.outcome,
        record.status_code,
        record.elapsed,
        follows,
    )


def log_line(
    number: int,
    delivery_id: str,
    registration_id: str,
    topic: str,
    outcome: str,
    status_code: int | None,
    elapsed: float,
    follows: str,
) -> None:
    """One line at INFO for a finished attempt: its delivery, registration, topic, outcome,
    status and duration, and what ``follows``; never a secret or the payload."""
    logger.info(
        "Webhook attempt %d of delivery %s (registration %s, topic %s): %s, status %s, %.0f ms; %s",
        number,
        delivery_id,
        registration_id,
        topic,
        outcome,
        status_code if status_code is not None else "none",
        elapsed * 1000,
        follows,
    )


def abandon(app: Flask, context: DeliveryContext, claimed: Claimed) -> None:
    """Fail a delivery whose registration was deleted or disabled, without sending it."""
    now = context.clock.now()
    error = "the registration was deleted or disabled before delivery"
    with context.database.writing() as session:
        done = claims.finish_without_attempt(
            session, delivery_id=claimed.delivery_id, token=claimed.token, error=error, now=now
        )
    if done:
        logger.info("Delivery %s not sent: %s", claimed.delivery_id, error)
        announce(
            app,
            delivery_id=claimed.delivery_id,
            registration_id=claimed.registration_id,
            topic=claimed.topic,
            succeeded=False,
            status_code=None,
            error=error,
            attempts=claimed.attempts,
        )


def announce(
    app: Flask,
    *,
    delivery_id: str,
    registration_id: str,
    topic: str,
    succeeded: bool,
    status_code: int | None,
    error: str | None,
    attempts: int,
) -> None:
    """Send the lifecycle signal of a delivery that ended, one way or the other."""
    if succeeded:
        _signal(
            signals.delivery_succeeded,
            app,
            delivery_id=delivery_id,
            registration_id=registration_id,
            topic=topic,
            status_code=status_code,
            attempts=attempts,
        )
        return
    _signal(
        signals.delivery_failed,
        app,
        delivery_id=delivery_id,
        registration_id=registration_id,
        topic=topic,
        error=error,
        attempts=attempts,
    )


def _signal(signal: NamedSignal, app: Flask, **fields: Any) -> None:
    """Send ``signal``; a host listener that raises is logged, never let through to the
    delivery machinery (whose bookkeeping is already written)."""
    try:
        signal.send(app, **fields)
    except Exception:
        logger.exception("A listener of the %s signal raised", signal.name)
