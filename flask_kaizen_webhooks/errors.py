"""Every exception the extension raises.

:class:`WebhooksError` is the root of them all. API errors carry everything the JSON error body
needs (``{"error": {"code", "message", "field", ...}}``) and subclass werkzeug's HTTP exceptions,
so a host that catches them generically still gets the right status code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from werkzeug.exceptions import HTTPException


class WebhooksError(Exception):
    """Base class of every exception raised by flask-kaizen-webhooks."""


class SchemaError(WebhooksError):
    """The extension's tables cannot be brought to the revision asked for: a revision that does
    not exist, or tables that match no revision."""


class ConfigurationError(WebhooksError, ValueError):
    """A ``KAIZEN_WEBHOOKS_*`` setting is missing or invalid; raised by ``init_app``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class MetricsUnavailable(WebhooksError, RuntimeError):
    """Prometheus metrics were asked for, and prometheus-client is not installed."""

    INSTALL = "pip install 'flask-kaizen-webhooks[metrics]'"

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs prometheus-client: {self.INSTALL}")
        self.what = what


def unknown_topic_message(topic: str, valid: Sequence[str]) -> str:
    """What every caller is told of a topic name that no one registered."""
    return f"Unknown topic {topic!r}; valid topics are: {', '.join(valid)}."


class UnknownTopic(WebhooksError, LookupError):
    """A topic name that no one registered."""

    def __init__(self, topic: str, valid: list[str]) -> None:
        super().__init__(unknown_topic_message(topic, valid))
        self.topic = topic
        self.valid_topics = valid


class ForbiddenDestination(WebhooksError):
    """The destination may not be called; ``reason`` says why (never with a secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SecretUnreadable(WebhooksError):
    """A stored secret cannot be opened with any configured key."""


class VerificationError(WebhooksError):
    """A webhook body could not be trusted; :attr:`code` says why."""

    code = "invalid_webhook"


class MalformedWebhook(VerificationError):
    """The body is not a compact JWS of a JSON object."""

    code = "malformed"


class InvalidSignature(VerificationError):
    """The signature does not match the secret (or the algorithm is not HS256)."""

    code = "bad_signature"


class ExpiredWebhook(VerificationError):
    """The ``iat`` in the JWS header is missing, too old or too far in the future."""

    code = "expired"


class DeliveryFailed(WebhooksError):
    """Some receivers of a synchronous webhook failed (only with ``raise_on_error=True``)."""

    def __init__(self, topic: str, results: Sequence[Any]) -> None:
        failed = [result for result in results if not result.ok]
        super().__init__(f"{len(failed)} of {len(results)} {topic} webhooks failed.")
        self.topic = topic
        self.results = list(results)


class ApiError(WebhooksError, HTTPException):
    """An error answered to an API caller as ``{"error": {...}}`` with a 4xx status."""

    code: int = 400

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(description=message)
        self.code = status
        self.error_code = error_code
        self.message = message
        self.field = field
        self.extra = extra
        self.extra_headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON error document for this error."""
        body: dict[str, Any] = {"code": self.error_code, "message": self.message}
        body["field"] = self.field
        body.update(self.extra)
        return {"error": body}


class ValidationError(ApiError):
    """A request field is missing, unknown or has an invalid value (422)."""

    def __init__(self, error_code: str, message: str, *, field: str | None, **extra: Any) -> None:
        super().__init__(422, error_code, message, field=field, **extra)


class RegistrationLimitReached(ApiError):
    """The owner has as many registrations as allowed (422)."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            422,
            "registration_limit",
            f"You have {count} registrations, the most allowed; delete one first.",
            limit=limit,
        )


class RateLimited(ApiError):
    """Too many calls of one kind this minute (429, with ``Retry-After``)."""

    def __init__(self, kind: str, per_minute: int, retry_after: int) -> None:
        super().__init__(
            429,
            "rate_limited",
            f"You made more than {per_minute} {kind} calls this minute; "
            f"try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
            limit=per_minute,
            retry_after=retry_after,
        )


class NotFound(ApiError):
    """The resource does not exist or belongs to another owner (404)."""

    def __init__(self, message: str = "No such registration.") -> None:
        super().__init__(404, "not_found", message)


class DeliveryInFlight(ApiError):
    """A delivery cannot be queued again while one of its attempts is under way (409)."""

    def __init__(self) -> None:
        super().__init__(
            409,
            "delivery_in_flight",
            "An attempt of this delivery is under way; ask again once it has ended.",
        )


class RegistrationDeleted(ApiError):
    """A delivery cannot be queued again once its registration is deleted (409)."""

    def __init__(self) -> None:
        super().__init__(
            409,
            "registration_deleted",
            "The registration of this delivery was deleted; it cannot be sent again.",
        )


class RegistrationDisabled(ApiError):
    """A delivery cannot be queued again while its registration is disabled (409)."""

    def __init__(self) -> None:
        super().__init__(
            409,
            "registration_disabled",
            "The registration of this delivery is disabled; enable it first "
            '(PUT it with "state": "active"), then ask again.',
        )


class PullOnlyRegistration(ApiError):
    """Nothing of a pull-only registration is sent, so nothing is sent again (409)."""

    def __init__(self) -> None:
        super().__init__(
            409,
            "pull_only",
            "The registration is pull-only: its deliveries are kept in its feed and never sent, "
            "so none is sent again. Read them with GET /registrations/<id>/feed, or give it a "
            "URL (PUT it with a 'url') to have new events pushed.",
        )


class RevConflict(ApiError):
    """The ``rev`` sent with a change is missing or no longer current (409)."""

    def __init__(self, current_rev: str, sent_rev: str | None) -> None:
        if sent_rev is None:
            message = f"The current rev is required (send it as 'rev' or If-Match): {current_rev}."
        else:
            message = f"Rev {sent_rev} is stale; the current rev is {current_rev}."
        super().__init__(409, "rev_conflict", message, field="rev", current_rev=current_rev)
        self.current_rev = current_rev


class DuplicateRegistration(ApiError):
    """The owner already registered this URL for this topic, or already has a pull-only
    registration of it (409)."""

    def __init__(self, existing_id: str, *, pull_only: bool = False) -> None:
        super().__init__(
            409,
            "duplicate_registration",
            "You already have a pull-only registration for this topic."
            if pull_only
            else "This URL is already registered for this topic.",
            existing_id=existing_id,
        )
        self.existing_id = existing_id


class PortalRefused(WebhooksError):
    """The portal cannot be opened, or a request of it is refused: why, in words an integrator
    understands, on a page with ``status`` (403 unless told otherwise). Not an HTTP exception,
    so that the host's own error handlers (by status code) never answer in the portal's
    place."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status
