"""The signed request of a webhook: its headers, and its body, a compact JWS of the payload
signed with the registration's secret (and the next secret during a rotation's overlap); and
its attempt's span (see :mod:`..tracing`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import SecretUnreadable
from ..signing import detached, sign
from ..storage.rows import Claimed, Target
from ..tracing import NO_SPAN, AttemptSpan, Current, attempt_span
from ..version import __version__
from .client import SendResult
from .context import DeliveryContext

logger = logging.getLogger("flask_kaizen_webhooks")

USER_AGENT = f"flask-kaizen-webhooks/{__version__}"


@dataclass(frozen=True, slots=True)
class Request:
    """A signed webhook POST, ready to go."""

    url: str
    body: bytes
    headers: dict[str, str]
    #: Started as the request really goes (it may add its trace context to ``headers``), ended
    #: with its result.
    span: AttemptSpan = NO_SPAN


def request_headers(topic: str, delivery_id: str, attempt_number: int) -> dict[str, str]:
    """The headers of every webhook POST."""
    return {
        "Content-Type": "application/jose",
        "User-Agent": USER_AGENT,
        "Webhook-Topic": topic,
        "Webhook-Id": delivery_id,
        "Webhook-Attempt": str(attempt_number),
    }


def signed_request(
    context: DeliveryContext,
    *,
    target: Target,
    payload: bytes,
    topic: str,
    delivery_id: str,
    number: int,
    trace_parent: str | Current | None,
) -> Request | SendResult:
    """The request of attempt ``number`` that pushes ``payload`` to ``target``, signed (see
    :func:`signed_body`), with its span, whose parent is ``trace_parent`` (see
    :func:`..tracing.attempt_span`); a failed result when it cannot be signed, or ``target`` is
    pull-only."""
    if target.url is None:
        return SendResult(None, 0.0, b"", None, None, "the registration is pull-only")
    headers = request_headers(topic, delivery_id, number)
    body = signed_body(
        context, target=target, payload=payload, headers=headers, delivery_id=delivery_id
    )
    if isinstance(body, SendResult):
        return body
    span = attempt_span(
        topic=topic,
        registration_id=target.registration_id,
        delivery_id=delivery_id,
        number=number,
        url=target.url,
        parent=trace_parent,
        headers=headers if context.settings.propagate_trace else None,
    )
    return Request(target.url, body, headers, span)


def signed_body(
    context: DeliveryContext,
    *,
    target: Target,
    payload: bytes,
    headers: dict[str, str],
    delivery_id: str,
) -> bytes | SendResult:
    """Open the secret and sign ``payload`` with a fresh ``iat``; a failed result when it
    cannot be signed.

    During a secret rotation's overlap the body stays signed with the previous secret, so
    receivers that know only that one keep working, and ``Webhook-Signature-Next`` (added to
    ``headers``) carries the signature with the new secret (a detached JWS) for receivers that
    have switched.
    """
    now = context.clock.time()
    try:
        secret = context.secrets.open(target.sealed_secret)
        overlapping = (
            target.previous_sealed_secret is not None
            and target.previous_secret_until is not None
            and target.previous_secret_until.timestamp() > now
        )
        if overlapping:
            assert target.previous_sealed_secret is not None
            previous = context.secrets.open(target.previous_sealed_secret)
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
    return body.encode("ascii")


def request_of(context: DeliveryContext, claimed: Claimed) -> Request | SendResult:
    """The signed request of a claimed delivery's next attempt (or why it cannot be made)."""
    target = claimed.target
    assert target is not None, "abandon() deliveries whose registration is gone"
    return signed_request(
        context,
        target=target,
        payload=claimed.payload.encode(),
        topic=claimed.topic,
        delivery_id=claimed.delivery_id,
        number=claimed.attempts + 1,
        trace_parent=claimed.trace_parent,
    )
