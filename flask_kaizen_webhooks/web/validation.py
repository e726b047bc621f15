"""Checks of the registration documents integrators send; each failure is a precise 422."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import SplitResult, urlsplit

from jose.exceptions import JOSEError

from ..clock import as_utc
from ..config import MAX_LINK_SECONDS
from ..errors import ForbiddenDestination, ValidationError, unknown_topic_message
from ..guard import (
    ALLOW_NETWORK_HINT,
    AddressPolicy,
    ascii_name,
    is_local_name,
    literal_address,
)
from ..portal.access import link_seconds
from ..signing import sign, verify_with
from ..storage.tables import Ordering, RegistrationState
from ..topics import TopicRegistry

MAX_URL_LENGTH = 2048
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256

#: A registration's delivery options: on an update, only those given change.
OPTION_FIELDS = frozenset({"ordering", "max_per_second"})
CREATE_FIELDS = frozenset({"topic", "url", "secret"}) | OPTION_FIELDS
UPDATE_FIELDS = frozenset({"topic", "url", "secret", "rev", "state"}) | OPTION_FIELDS
ORDERINGS = tuple(ordering.value for ordering in Ordering)
#: The highest ``max_per_second`` a registration may have.
MAX_PER_SECOND = 10_000
TEST_FIELDS = frozenset({"topic", "registration_id"})
PORTAL_LINK_FIELDS = frozenset({"expires_in"})
#: How far in the future a recovery's window may end: clocks of machines differ a little.
CLOCK_SKEW = timedelta(minutes=5)
RECOVER_FIELDS = frozenset({"since", "until", "status"})
#: What ``"status"`` of a recovery may be: the deliveries it queues again.
RECOVER_STATUSES = {"failed": ("failed",), "all": ("failed", "succeeded")}
ROTATION_FIELDS = frozenset({"secret", "rev", "overlap_seconds"})
MAX_OVERLAP_SECONDS = 30 * 86400
STATES = tuple(state.value for state in RegistrationState)


@dataclass(frozen=True, slots=True)
class RegistrationInput:
    """A validated registration document."""

    topic: str
    #: None: pull-only, read through its feed and never pushed to.
    url: str | None
    secret: str | None
    rev: str | None
    state: str | None = None
    #: The delivery options given (``ordering``, ``max_per_second``), checked.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TestRequest:
    """A validated ``POST /test`` document."""

    topic: str
    registration_id: str | None


def parse_registration(
    document: Mapping[str, Any],
    *,
    topics: TopicRegistry,
    allow_http: bool,
    policy: AddressPolicy,
    for_update: bool,
) -> RegistrationInput:
    """Validate a create (``for_update=False``) or update document. Both must give ``url``:
    a URL, or null for a pull-only registration."""
    _refuse_unknown_fields(document, UPDATE_FIELDS if for_update else CREATE_FIELDS)
    topic = check_topic(_required_string(document, "topic"), topics)
    if "url" not in document:
        raise ValidationError(
            "missing_field",
            "The field 'url' is required: a URL, or null for a pull-only registration.",
            field="url",
        )
    raw_url = _optional_string(document, "url")
    url = None if raw_url is None else check_url(raw_url, allow_http=allow_http, policy=policy)
    if for_update and document.get("secret") is None:
        secret = None
    else:
        secret = check_secret(_required_string(document, "secret"))
    rev = _optional_string(document, "rev") if for_update else None
    state = _optional_string(document, "state") if for_update else None
    if state is not None and state not in STATES:
        raise ValidationError(
            "invalid_state", f"'state' must be one of: {', '.join(STATES)}.", field="state"
        )
    return RegistrationInput(topic, url, secret, rev, state, parse_options(document))


def parse_options(document: Mapping[str, Any]) -> dict[str, Any]:
    """The delivery options ``document`` gives, checked: ``ordering`` (one of
    :data:`ORDERINGS`) and ``max_per_second`` (a whole number from 1 to
    :data:`MAX_PER_SECOND`, or null for no limit of its own)."""
    options: dict[str, Any] = {}
    if "ordering" in document:
        if document["ordering"] not in ORDERINGS:
            raise ValidationError(
                "invalid_ordering",
                f"'ordering' must be one of: {', '.join(ORDERINGS)}.",
                field="ordering",
            )
        options["ordering"] = document["ordering"]
    if "max_per_second" in document:
        value = document["max_per_second"]
        if value is not None and (type(value) is not int or not 1 <= value <= MAX_PER_SECOND):
            raise ValidationError(
                "invalid_max_per_second",
                f"'max_per_second' must be a whole number from 1 to {MAX_PER_SECOND}, or null.",
                field="max_per_second",
            )
        options["max_per_second"] = value
    return options


@dataclass(frozen=True, slots=True)
class RotationRequest:
    """A validated ``POST /registrations/<id>/rotate-secret`` document."""

    secret: str | None
    rev: str | None
    overlap: float | None


def parse_rotation(document: Mapping[str, Any], *, max_overlap: float) -> RotationRequest:
    """Validate a secret rotation: an optional new secret, the rev, an optional overlap."""
    _refuse_unknown_fields(document, ROTATION_FIELDS)
    secret = _optional_string(document, "secret")
    overlap = document.get("overlap_seconds")
    if overlap is not None and (
        isinstance(overlap, bool)
        or not isinstance(overlap, int | float)
        or not 0 <= overlap <= max_overlap
    ):
        raise ValidationError(
            "invalid_overlap",
            f"'overlap_seconds' must be a number from 0 to {max_overlap:g}.",
            field="overlap_seconds",
        )
    return RotationRequest(
        secret=None if secret is None else check_secret(secret),
        rev=_optional_string(document, "rev"),
        overlap=None if overlap is None else float(overlap),
    )


def parse_portal_link(document: Mapping[str, Any]) -> float | None:
    """Validate a ``POST /portal-links`` document: the link's ``expires_in`` seconds, if given."""
    _refuse_unknown_fields(document, PORTAL_LINK_FIELDS)
    expires_in = document.get("expires_in")
    if expires_in is None:
        return None
    try:
        return link_seconds(expires_in)
    except ValueError:
        raise ValidationError(
            "invalid_expires_in",
            f"'expires_in' must be a number of seconds from 1 to {MAX_LINK_SECONDS}.",
            field="expires_in",
        ) from None


@dataclass(frozen=True, slots=True)
class RecoverRequest:
    """A validated ``POST /registrations/<id>/recover`` document."""

    since: datetime
    until: datetime
    statuses: tuple[str, ...]


def parse_recover(document: Mapping[str, Any], *, now: datetime, kept: timedelta) -> RecoverRequest:
    """Validate a recovery: a window of creation times ending by ``now`` (default: now) and
    starting within ``kept`` of it (older deliveries are purged), and which deliveries."""
    _refuse_unknown_fields(document, RECOVER_FIELDS)
    since = check_window(_required_string(document, "since"), "since", now=now, kept=kept)
    raw_until = _optional_string(document, "until")
    until = now if raw_until is None else check_window(raw_until, "until", now=now, kept=kept)
    if until <= since:
        raise ValidationError("invalid_window", "'until' must come after 'since'.", field="until")
    status = _optional_string(document, "status") or "failed"
    if status not in RECOVER_STATUSES:
        raise ValidationError(
            "invalid_status",
            f"'status' must be one of: {', '.join(RECOVER_STATUSES)}.",
            field="status",
        )
    return RecoverRequest(since, until, RECOVER_STATUSES[status])


def check_window(text: str, name: str, *, now: datetime, kept: timedelta) -> datetime:
    """``text`` as a moment (ISO 8601; UTC if it names no offset) from ``kept`` before ``now``
    to ``now`` (a little after, for clocks apart)."""
    try:
        moment = as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise ValidationError(
            "invalid_time",
            f"{name!r} must be an ISO 8601 time such as '2026-12-06T09:00:00Z'.",
            field=name,
        ) from None
    if moment < now - kept:
        raise ValidationError(
            "invalid_window",
            f"{name!r} is further back than deliveries are kept "
            f"({kept.total_seconds() / 86400:g} days).",
            field=name,
        )
    if moment > now + CLOCK_SKEW:
        raise ValidationError("invalid_window", f"{name!r} is in the future.", field=name)
    return moment


def parse_test_request(document: Mapping[str, Any], *, topics: TopicRegistry) -> TestRequest:
    """Validate a ``POST /test`` document."""
    _refuse_unknown_fields(document, TEST_FIELDS)
    topic = check_topic(_required_string(document, "topic"), topics)
    return TestRequest(topic=topic, registration_id=_optional_string(document, "registration_id"))


def check_topic(topic: str, topics: TopicRegistry) -> str:
    """``topic`` if it is known; otherwise a 422 that lists the valid topics."""
    if topic not in topics:
        valid = topics.names()
        raise ValidationError(
            "unknown_topic",
            unknown_topic_message(topic, valid),
            field="topic",
            valid_topics=valid,
        )
    return topic


def check_url(url: str, *, allow_http: bool, policy: AddressPolicy) -> str:
    """``url`` if it is an absolute http(s) URL an integrator may register.

    Host names are not resolved here (integrators register before their DNS is live): the
    send-time check is the real boundary. What is already known to be forbidden (literal
    addresses, ``localhost``-style names, ports) is refused now.
    """
    if len(url) > MAX_URL_LENGTH:
        raise _invalid_url(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _invalid_url("The URL contains whitespace or control characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        raise _invalid_url(f"The URL cannot be parsed: {exc}.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _invalid_url("The URL must be absolute and start with https:// (or http://).")
    if "@" in parts.netloc:
        raise _invalid_url("The URL must not contain user information (user:password@).")
    if not parts.hostname:
        raise _invalid_url("The URL has no host name.")
    if parts.port == 0:
        raise _invalid_url("The URL's port must be between 1 and 65535.")
    if "%" in parts.hostname:
        raise _invalid_url("The host must not carry a zone (%) or percent-encoding.")
    if scheme == "http" and not allow_http:
        raise ValidationError(
            "http_not_allowed",
            "Plain http URLs are not allowed here: use https://. An operator can allow http "
            "with KAIZEN_WEBHOOKS_ALLOW_HTTP.",
            field="url",
        )
    try:
        host = ascii_name(parts.hostname)
    except ValueError as exc:
        raise _invalid_url(f"The host is {exc}.") from None
    if host != parts.hostname:
        url = _with_host(url, parts, host)
        if len(url) > MAX_URL_LENGTH:
            raise _invalid_url(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    _check_destination(host, parts.port or (443 if scheme == "https" else 80), policy)
    return url


def _with_host(url: str, parts: SplitResult, host: str) -> str:
    """``url`` with its host replaced (the rest kept as written; it has no user information)."""
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    start = url.index("//") + 2
    return url[:start] + netloc + url[start + len(parts.netloc) :]


def _check_destination(host: str, port: int, policy: AddressPolicy) -> None:
    literal = literal_address(host)
    if literal is None and is_local_name(host):
        literal = ipaddress.ip_address("127.0.0.1")
        if policy.refusal(literal) is not None:
            raise ValidationError(
                "forbidden_address",
                f"Webhooks cannot go to {host!r}: the name stands for this machine or a private "
                "network. An operator can allow such names by opening 127.0.0.1 with "
                "KAIZEN_WEBHOOKS_ALLOWED_NETWORKS.",
                field="url",
            )
    addresses = [] if literal is None else [literal]
    if literal is not None:
        kind = policy.refusal(literal)
        if kind is not None:
            raise ValidationError(
                "forbidden_address",
                f"Webhooks cannot go to {literal}: it is {kind}. {ALLOW_NETWORK_HINT}",
                field="url",
            )
    try:
        policy.check_port(port, addresses)
    except ForbiddenDestination as exc:
        raise ValidationError(
            "forbidden_port", f"Webhooks cannot go to this URL: {exc.reason}", field="url"
        ) from None


def check_secret(secret: str) -> str:
    """``secret`` if HS256 signing and verification with it are sound."""
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
        raise ValidationError(
            "invalid_secret",
            f"The secret must be {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters long.",
            field="secret",
        )
    try:
        json.loads(secret)
    except ValueError:
        pass
    else:
        # python-jose reads a key that parses as JSON as a JSON Web Key, and then cannot verify.
        raise ValidationError(
            "invalid_secret",
            "The secret must not be a JSON value (such as a number or an object); "
            "use a random string.",
            field="secret",
        )
    try:
        verify_with(sign(b"{}", secret), secret)
    except JOSEError:
        # python-jose refuses HMAC keys that look like public keys (PEM, ssh-rsa ...).
        raise ValidationError(
            "invalid_secret",
            "The secret looks like a public or private key, which cannot serve as an HMAC "
            "secret; use a random string.",
            field="secret",
        ) from None
    return secret


def _refuse_unknown_fields(document: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(document) - set(allowed))
    if unknown:
        raise ValidationError(
            "unknown_field",
            f"Unknown field {unknown[0]!r}; allowed fields are: {', '.join(sorted(allowed))}.",
            field=printable(unknown[0]),
        )


def _required_string(document: Mapping[str, Any], name: str) -> str:
    if document.get(name) is None:
        raise ValidationError("missing_field", f"The field {name!r} is required.", field=name)
    return _string(document[name], name)


def _optional_string(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    return None if value is None else _string(value, name)


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValidationError("invalid_type", f"The field {name!r} must be a string.", field=name)
    return check_text(value, name)


def check_text(value: str, name: str) -> str:
    """``value`` if text can hold it; a 422 naming ``name`` for NUL or an unpaired surrogate."""
    if not storable(value):
        raise ValidationError(
            "invalid_characters",
            f"The field {name!r} holds a NUL character or an unpaired surrogate, "
            "which no text field can hold.",
            field=name,
        )
    return value


def storable(text: str) -> bool:
    """False for text that cannot be stored or sent: with NUL (refused by PostgreSQL) or an
    unpaired surrogate (not encodable as UTF-8)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with NUL and unpaired surrogates written as escapes, to be shown in an answer."""
    if storable(text):
        return text
    return "".join(ch if storable(ch) else ascii(ch)[1:-1] for ch in text)


def _invalid_url(message: str) -> ValidationError:
    return ValidationError("invalid_url", message, field="url")
