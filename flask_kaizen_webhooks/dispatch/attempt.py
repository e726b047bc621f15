"""One delivery attempt, shared by every engine: build the signed request, send it, decide what
comes next and record it."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy.orm import Session

from .. import signals, store
from ..models import Attempt, DeliveryStatus
from ..sealing import SecretUnreadable
from ..signing import detached, sign
from ..transport import SendResult
from ..version import __version__

if TYPE_CHECKING:
    from ..extension import WebhooksState

logger = logging.getLogger("flask_kaizen_webhooks")

USER_AGENT = f"flask-kaizen-webhooks/{__version__}"
EXCERPT_CHARS = 2048


@dataclass(frozen=True, slots=True)
class Step:
    """What follows an attempt: ``succeeded``, ``retry`` at ``retry_at``, ``failed`` or ``gone``."""

    kind: str
    retry_at: datetime | None = None


def request_headers(topic: str, delivery_id: str, attempt_number: int) -> dict[str, str]:
    """The headers of every webhook POST."""
    return {
        "Content-Type": "application/jose",
        "User-Agent": USER_AGENT,
        "Webhook-Topic": topic,
        "Webhook-Id": delivery_id,
        "Webhook-Attempt": str(attempt_number),
    }


def send(
    state: WebhooksState,
    *,
    target: store.Target,
    payload: bytes,
    topic: str,
    delivery_id: str,
    attempt_number: int,
    timeout: float,
) -> SendResult:
    """Open the secret, sign ``payload`` with a fresh ``iat`` and POST it.

    During a secret rotation's overlap the body stays signed with the previous secret, so
    receivers that know only that one keep working, and ``Webhook-Signature-Next`` carries the
    signature with the new secret (a detached JWS) for receivers that have switched.
    """
    try:
        return _sign_and_post(
            state,
            target=target,
            payload=payload,
            headers=request_headers(topic, delivery_id, attempt_number),
            timeout=timeout,
        )
    except Exception as exc:  # a defect, not the receiver's doing: record it as a failure
        logger.exception("Delivery %s: unexpected error while sending", delivery_id)
        return SendResult(None, 0.0, b"", None, None, f"internal error: {type(exc).__name__}")


def _sign_and_post(
    state: WebhooksState,
    *,
    target: store.Target,
    payload: bytes,
    headers: dict[str, str],
    timeout: float,
) -> SendResult:
    now = state.clock.time()
    try:
        secret = state.secrets.open(target.sealed_secret)
        overlapping = (
            target.previous_sealed_secret is not None
            and target.previous_secret_until is not None
            and target.previous_secret_until.timestamp() > now
        )
        if overlapping:
            assert target.previous_sealed_secret is not None
            previous = state.secrets.open(target.previous_sealed_secret)
            body = sign(payload, previous, issued_at=now, kid=target.secret_version - 1)
            headers["Webhook-Signature-Next"] = detached(
                sign(payload, secret, issued_at=now, kid=target.secret_version)
            )
        else:
            body = sign(payload, secret, issued_at=now, kid=target.secret_version)
    except SecretUnreadable as exc:
        return SendResult(None, 0.0, b"", None, None, str(exc))
    return state.transport.post(
        target.url,
        body.encode("ascii"),
        headers,
        timeout=timeout,
        connect_timeout=state.settings.connect_timeout,
    )


def describe_failure(result: SendResult) -> str | None:
    """Why ``result`` is not a success, in a few words; None when it is one."""
    if result.ok:
        return None
    if result.error is not None:
        return result.error
    assert result.status_code is not None
    if 300 <= result.status_code < 400:
        return f"HTTP {result.status_code}: redirects are not followed"
    return f"HTTP {result.status_code}"


def excerpt(body: bytes) -> str | None:
    """The start of a response body, as text, for the delivery log."""
    if not body:
        return None
    return body[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]


def response_json(result: SendResult) -> Any:
    """The response's JSON document, if it sent one (within the read cap)."""
    if not result.body or "json" not in (result.content_type or ""):
        return None
    try:
        return json.loads(result.body)
    except ValueError:
        return None


def next_step(
    result: SendResult,
    *,
    retry_index: int,
    schedule: tuple[float, ...],
    jitter: float,
    max_retry_after: float,
    now: datetime,
    rng: random.Random,
) -> Step:
    """Success, a retry later (backoff with jitter, or the receiver's ``Retry-After`` on
    429/503), failure for good once the schedule is used up, or ``gone`` on 410."""
    if result.ok:
        return Step("succeeded")
    if result.status_code == 410:
        return Step("gone")
    if retry_index >= len(schedule):
        return Step("failed")
    delay = schedule[retry_index] * (1 + rng.uniform(-jitter, jitter))
    if result.status_code in (429, 503) and result.retry_after is not None:
        delay = min(result.retry_after, max_retry_after)
    return Step("retry", retry_at=now + timedelta(seconds=delay))


def deliver_claimed(app: Flask, state: WebhooksState, delivery_id: str, token: str) -> None:
    """Load a delivery this worker has claimed, then make its next attempt."""
    with state.database.independent_session() as session:
        loaded = store.load_claimed(session, ids=[delivery_id], token=token)
    for claimed in loaded:  # none if the claim expired and another worker took it
        deliver(app, state, claimed)


def deliver(app: Flask, state: WebhooksState, claimed: store.Claimed) -> None:
    """Make the next attempt of a claimed, loaded delivery, and record it."""
    target = claimed.target
    if target is None:
        _abandon(
            app,
            state,
            claimed.delivery_id,
            claimed.token,
            claimed.topic,
            claimed.registration_id,
            claimed.attempts,
        )
        return
    host = (urlsplit(target.url).hostname or "").lower()
    with state.in_flight.slot(claimed.registration_id, host) as free:
        if not free:
            # This registration (or host) already occupies its share of the workers: come back
            # to it shortly rather than queue behind a receiver that may be hanging.
            later = state.clock.now() + timedelta(seconds=state.settings.poll_interval)
            with state.database.writing() as session:
                store.release_claim(
                    session, delivery_id=claimed.delivery_id, token=claimed.token, now=later
                )
            return
        _attempt(
            app,
            state,
            claimed.delivery_id,
            claimed.token,
            claimed.topic,
            claimed.payload,
            claimed.attempts + 1,
            claimed.retry_index,
            target,
        )


def _attempt(
    app: Flask,
    state: WebhooksState,
    delivery_id: str,
    token: str,
    topic: str,
    payload: str,
    number: int,
    retry_index: int,
    target: store.Target,
) -> None:
    """Send one attempt of a claimed delivery and record what came of it."""
    database = state.database
    settings = state.settings
    registration_id = target.registration_id
    started = state.clock.now()
    result = send(
        state,
        target=target,
        payload=payload.encode(),
        topic=topic,
        delivery_id=delivery_id,
        attempt_number=number,
        timeout=settings.async_timeout,
    )
    now = state.clock.now()
    step = next_step(
        result,
        retry_index=retry_index,
        schedule=settings.retry_schedule,
        jitter=settings.retry_jitter,
        max_retry_after=settings.max_retry_after,
        now=now,
        rng=state.rng,
    )
    error = describe_failure(result)
    values: dict[str, Any] = {
        "attempts": number,
        "last_status_code": result.status_code,
        "last_error": error,
        "response_excerpt": excerpt(result.body),
        "updated_at": now,
    }
    if step.kind == "retry":
        values.update(next_attempt_at=step.retry_at, retry_index=retry_index + 1)
    else:
        succeeded = step.kind == "succeeded"
        values.update(
            status=DeliveryStatus.SUCCEEDED if succeeded else DeliveryStatus.FAILED,
            completed_at=now,
            next_attempt_at=None,
        )
    attempt = Attempt(
        delivery_id=delivery_id,
        number=number,
        started_at=started,
        elapsed=result.elapsed,
        status_code=result.status_code,
        error=error,
        response_excerpt=values["response_excerpt"],
    )
    disabled_reason = None
    with database.writing() as session:
        if not store.record_attempt(
            session, delivery_id=delivery_id, token=token, attempt=attempt, values=values
        ):
            logger.warning("Delivery %s: claim lost before its result was recorded", delivery_id)
            return
        disabled_reason = _registration_health(session, state, registration_id, step.kind, now)
    if step.kind != "retry":
        if step.kind != "succeeded":
            logger.warning(
                "Delivery %s failed for good after %d attempts: %s", delivery_id, number, error
            )
        announce(
            app,
            delivery_id=delivery_id,
            registration_id=registration_id,
            topic=topic,
            succeeded=step.kind == "succeeded",
            status_code=result.status_code,
            error=error,
            attempts=number,
        )
    if disabled_reason is not None:
        logger.warning("Registration %s disabled: %s", registration_id, disabled_reason)
        signals.registration_disabled.send(
            app, registration_id=registration_id, reason=disabled_reason
        )
    if step.kind == "retry":
        logger.info(
            "Delivery %s attempt %d failed (%s); retry at %s",
            delivery_id,
            number,
            error,
            step.retry_at,
        )


def _registration_health(
    session: Session, state: WebhooksState, registration_id: str, kind: str, now: datetime
) -> str | None:
    """Disable the registration on 410 or on a long run of failures; the reason if it was."""
    if kind == "gone":
        reason = "the receiver answered 410 Gone"
        return (
            reason
            if store.disable_if_active(session, registration_id, reason=reason, now=now)
            else None
        )
    if kind == "retry":
        return None
    settings = state.settings
    return store.note_delivery_outcome(
        session,
        registration_id=registration_id,
        succeeded=kind == "succeeded",
        now=now,
        disable_after_failures=settings.disable_after_failures,
        disable_after=timedelta(seconds=settings.disable_after_seconds),
    )


def _abandon(
    app: Flask,
    state: WebhooksState,
    delivery_id: str,
    token: str,
    topic: str,
    registration_id: str,
    attempts: int,
) -> None:
    """Fail a delivery whose registration was deleted or disabled, without sending it."""
    now = state.clock.now()
    error = "the registration was deleted or disabled before delivery"
    with state.database.writing() as session:
        done = store.finish_without_attempt(
            session, delivery_id=delivery_id, token=token, error=error, now=now
        )
    if done:
        logger.info("Delivery %s not sent: %s", delivery_id, error)
        announce(
            app,
            delivery_id=delivery_id,
            registration_id=registration_id,
            topic=topic,
            succeeded=False,
            status_code=None,
            error=error,
            attempts=attempts,
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
        signals.delivery_succeeded.send(
            app,
            delivery_id=delivery_id,
            registration_id=registration_id,
            topic=topic,
            status_code=status_code,
            attempts=attempts,
        )
        return
    signals.delivery_failed.send(
        app,
        delivery_id=delivery_id,
        registration_id=registration_id,
        topic=topic,
        error=error,
        attempts=attempts,
    )
