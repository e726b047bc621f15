"""Who may see the portal: links carrying a signed token bound to one owner, which open a
session held in a cookie scoped to the portal's path; and the token every form carries.

Everything is signed with itsdangerous under the app's ``SECRET_KEY`` (and its
``SECRET_KEY_FALLBACKS``, so that the key can be rotated), each kind of token with a salt of its
own, so that no token passes for another kind.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any

from flask import Flask
from itsdangerous import BadSignature, URLSafeSerializer

from ..clock import isoformat
from ..config import MAX_LINK_SECONDS
from ..errors import PortalRefused

LINK_SALT = "flask-kaizen-webhooks.portal-link"
SESSION_SALT = "flask-kaizen-webhooks.portal-session"
CSRF_SALT = b"flask-kaizen-webhooks.portal-form"
#: The session cookie's name.
COOKIE = "kaizen_webhooks_portal"


@dataclass(frozen=True, slots=True)
class PortalLink:
    """A link that opens the portal for one owner until ``expires_at``."""

    url: str
    expires_at: datetime

    def to_dict(self) -> dict[str, str]:
        return {"url": self.url, "expires_at": isoformat(self.expires_at)}


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid link grants: a session for ``owner`` until ``expires_at``."""

    link_id: str
    owner: str
    expires_at: datetime


def link_seconds(expires_in: float) -> float:
    """``expires_in`` checked: a number of seconds from 1 to a week."""
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not 1 <= expires_in <= MAX_LINK_SECONDS
    ):
        raise ValueError(
            f"a portal link lasts from 1 to {MAX_LINK_SECONDS} seconds, not {expires_in!r}"
        )
    return float(expires_in)


def _keys(app: Flask) -> list[Any]:
    """The app's signing keys, oldest first, the current one last (as itsdangerous takes them)."""
    return [*(app.config.get("SECRET_KEY_FALLBACKS") or ()), app.secret_key]


def link_token(app: Flask, owner: str, expires_at: datetime) -> str:
    """A new link's token: its id, its owner and its end, signed."""
    data = {"l": uuid.uuid4().hex, "o": owner, "e": int(expires_at.timestamp())}
    return URLSafeSerializer(_keys(app), salt=LINK_SALT).dumps(data)


def read_link(app: Flask, token: str, now: datetime) -> Grant:
    """What ``token`` grants at ``now``; :class:`PortalRefused` if it was altered or has expired."""
    try:
        data = URLSafeSerializer(_keys(app), salt=LINK_SALT).loads(token)
        link_id, owner, ends = str(data["l"]), str(data["o"]), int(data["e"])
    except (BadSignature, KeyError, TypeError, ValueError):
        raise PortalRefused(
            "This portal link is not valid: it is incomplete or was altered. Copy the whole "
            "link, or ask for a new one."
        ) from None
    expires_at = datetime.fromtimestamp(ends, UTC)
    if expires_at <= now:
        raise PortalRefused(
            f"This portal link expired at {isoformat(expires_at)}. Ask for a new one: links "
            "last an hour unless their maker chose otherwise."
        )
    return Grant(link_id, owner, expires_at)


def session_cookie(app: Flask, grant: Grant) -> str:
    """The session cookie's value for the session ``grant`` opened."""
    return URLSafeSerializer(_keys(app), salt=SESSION_SALT).dumps(grant.link_id)


def read_session_cookie(app: Flask, value: str | None) -> str | None:
    """The session id a cookie carries; None if there is none, or it was altered."""
    if not value:
        return None
    try:
        session_id = URLSafeSerializer(_keys(app), salt=SESSION_SALT).loads(value)
    except BadSignature:
        return None
    return session_id if isinstance(session_id, str) else None


def csrf_token(app: Flask, session_id: str) -> str:
    """The token every form of session ``session_id`` carries: a keyed digest of the session,
    which a page of another site cannot know."""
    key = str(app.secret_key).encode()
    return hmac.new(key, CSRF_SALT + session_id.encode(), sha256).hexdigest()


def csrf_matches(app: Flask, session_id: str, sent: str | None) -> bool:
    """Whether ``sent`` is the session's form token (compared in constant time)."""
    if sent is None:
        return False
    return hmac.compare_digest(
        csrf_token(app, session_id).encode(), sent.encode("utf-8", "replace")
    )


def expiry(now: datetime, seconds: float) -> datetime:
    """When a link made at ``now`` to last ``seconds`` expires, to the second."""
    return (now + timedelta(seconds=seconds)).replace(microsecond=0)
