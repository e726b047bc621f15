"""One delivery attempt, shared by every engine: build the signed request, send it, decide what
comes next and record it."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from blinker import NamedSignal
from flask import Flask

from .. import signals, store
from ..client import Client, SendResult
from ..sealing import SecretUnreadable
from ..signing import detached, sign
from ..version import __version__

if TYPE_CHECKING:
    from ..extension import WebhooksState

logger = logging.getLogger("flask_kaizen_webhooks")

USER_AGENT = f"flask-kaizen-webhooks/{__version__}"
EXCERPT_CHARS = 2048
#: The deepest nesting of a receiver's JSON answer handed to the host; deeper answers are
#: treated as not JSON (they could exhaust the host's stack when encoded again).
MAX_JSON_DEPTH = 32


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


@dataclass(frozen=True, slots=True)
class Request:
    """A signed webhook POST, ready to go."""

    url: str
    body: bytes
    headers: dict[str, str]


def post(
    state: WebhooksState,
    request: Request | SendResult,
    *,
    timeout: float,
    client: Client | None = None,
) -> SendResult:
    """POST ``request`` with ``client`` (default: the background engine's) and wait for the
    result; a request that could not be made is its own result."""
    if isinstance(request, SendResult):
        return request
    return (client or state.client).post(
        request.url, request.body, request.headers, timeout=timeout
    )


def signed_request(
    state: WebhooksState,
    *,
    target: store.Target,
    payload: bytes,
    headers: dict[str, str],
    delivery_id: str,
) -> Request | SendResult:
    """Open the secret and sign ``payload`` with a fresh ``iat``; a failed result when it
    cannot be signed.

    During a secret rotation's overlap the body stays signed with the previous secret, so
    receivers that know only that one keep working, and ``Webhook-Signature-Next`` carries the
    signature with the new secret (a detached JWS) for receivers that have switched.
    """
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
    except Exception as exc:  # a defect, not the receiver's doing: record it as a failure
        logger.exception("Delivery %s: unexpected error while signing", delivery_id)
        return SendResult(None, 0.0, b"", None, None, f"internal error: {type(exc).__name__}")
    return Request(target.url, body.encode("ascii"), headers)


def describe_failure(result: SendResult) -> str | None:
    """Why ``result`` is not a success, in a few words; None when it is one."""
    if result.ok:
        return None
    if result.error is not None:
        return storable(result.error)
    assert result.status_code is not None
    if 300 <= result.status_code < 400:
        return f"HTTP {result.status_code}: redirects are not followed"
    return f"HTTP {result.status_code}"


def excerpt(body: bytes) -> str | None:
    """The start of a response body, as text, for the delivery log."""
    if not body:
        return None
    return storable(body[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS])


def storable(text: str) -> str:
    """``text`` as every supported database stores it: NUL characters (which PostgreSQL
    refuses) and lone surrogates (which are not UTF-8) replaced by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    return text


def response_json(result: SendResult) -> Any:
    """The response's JSON document, if it sent one (within the read cap) and it is plain
    JSON nested at most :data:`MAX_JSON_DEPTH` deep; None otherwise. A receiver's answer is
    untrusted: nothing in it may raise."""
    if not result.body or "json" not in (result.content_type or "").lower():
        return None
    try:
        document = json.loads(result.body, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        return None
    return document if _nested_within(document, MAX_JSON_DEPTH) else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: JSON the host could not encode again
        raise ValueError(f"{text[:20]} is out of range")
    return number


def _nested_within(document: Any, limit: int) -> bool:
    """True if no array or object in ``document`` lies deeper than ``limit`` levels."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if not isinstance(value, list):
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in value)
    return True


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


def attempt(state: WebhooksState, claimed: store.Claimed) -> store.AttemptRecord:
    """Make the next attempt of a claimed delivery (whose registration is active) and decide
    what follows; nothing is written here (see :func:`record`)."""
    started = state.clock.now()
    result = post(state, request_of(state, claimed), timeout=state.settings.async_timeout)
    return conclude(state, claimed, started, result)


def request_of(state: WebhooksState, claimed: store.Claimed) -> Request | SendResult:
    """The signed request of a claimed delivery's next attempt (or why it cannot be made)."""
    target = claimed.target
    assert target is not None, "abandon() deliveries whose registration is gone"
    return signed_request(
        state,
        target=target,
        payload=claimed.payload.encode(),
        headers=request_headers(claimed.topic, claimed.delivery_id, claimed.attempts + 1),
        delivery_id=claimed.delivery_id,
    )


def conclude(
    state: WebhooksState, claimed: store.Claimed, started: datetime, result: SendResult
) -> store.AttemptRecord:
    """The record of an attempt started at ``started`` that came to ``result``, with what
    follows it."""
    settings = state.settings
    now = state.clock.now()
    step = next_step(
        result,
        retry_index=claimed.retry_index,
        schedule=settings.retry_schedule,
        jitter=settings.retry_jitter,
        max_retry_after=settings.max_retry_after,
        now=now,
        rng=state.rng,
    )
    return store.AttemptRecord(
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
    )


def record(app: Flask, state: WebhooksState, records: Sequence[store.AttemptRecord]) -> None:
    """Write attempts in one short transaction, then log them and send the signals of the
    deliveries that ended and the registrations that were disabled."""
    settings = state.settings
    with state.database.writing() as session:
        recorded = store.record_attempts(
            session,
            records,
            disable_after_failures=settings.disable_after_failures,
            disable_after=timedelta(seconds=settings.disable_after_seconds),
        )
    kept = {record.delivery_id for record in recorded.kept}
    for record in records:
        if record.delivery_id not in kept:
            logger.warning(
                "Delivery %s: claim lost before its result was recorded", record.delivery_id
            )
        elif record.kind == "retry":
            logger.info(
                "Delivery %s attempt %d failed (%s); retry at %s",
                record.delivery_id,
                record.number,
                record.error,
                record.retry_at,
            )
        else:
            if record.kind != "succeeded":
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
                succeeded=record.kind == "succeeded",
                status_code=record.status_code,
                error=record.error,
                attempts=record.number,
            )
    for registration_id, reason in recorded.disabled.items():
        logger.warning("Registration %s disabled: %s", registration_id, reason)
        _signal(signals.registration_disabled, app, registration_id=registration_id, reason=reason)


def abandon(app: Flask, state: WebhooksState, claimed: store.Claimed) -> None:
    """Fail a delivery whose registration was deleted or disabled, without sending it."""
    now = state.clock.now()
    error = "the registration was deleted or disabled before delivery"
    with state.database.writing() as session:
        done = store.finish_without_attempt(
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
