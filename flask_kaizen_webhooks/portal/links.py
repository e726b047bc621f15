"""Making portal links: for the host (``webhooks.portal_link``), the API (``POST
/portal-links``) and the command line (``flask webhooks portal-link``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, has_request_context, url_for

from ..errors import WebhooksError
from ..state import get_state
from . import access
from .access import PortalLink

#: The portal's endpoint that a link opens.
ENTER = "kaizen_webhooks_portal.enter"


def make_link(
    app: Flask, owner: str, *, expires_in: float | None = None, base_url: str | None = None
) -> PortalLink:
    """A link opening the portal for ``owner``, for ``expires_in`` seconds (default:
    ``KAIZEN_WEBHOOKS_PORTAL_LINK_SECONDS``). Its address starts with ``base_url``, or
    ``KAIZEN_WEBHOOKS_PORTAL_BASE_URL``, or the current request's, or ``SERVER_NAME``'s."""
    state = get_state(app)
    settings = state.settings
    if not settings.portal:
        raise WebhooksError("The portal is turned off (KAIZEN_WEBHOOKS_PORTAL = False).")
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"a portal link is for one owner key (a non-empty string), not {owner!r}")
    seconds = (
        settings.portal_link_seconds if expires_in is None else access.link_seconds(expires_in)
    )
    expires_at = access.expiry(state.clock.now(), seconds)
    token = access.link_token(app, owner, expires_at)
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(
                f"expected a base URL such as 'https://app.example.com', not {base_url!r}"
            )
    base = base_url or settings.portal_base_url
    if base is not None:
        with app.test_request_context(base_url=base):
            url = url_for(ENTER, t=token, _external=True)
    elif has_request_context():
        url = url_for(ENTER, t=token, _external=True)
    elif app.config.get("SERVER_NAME"):
        with app.app_context():
            url = url_for(ENTER, t=token, _external=True)
    else:
        raise WebhooksError(
            "A portal link made outside a request needs the host's address: set "
            "KAIZEN_WEBHOOKS_PORTAL_BASE_URL (or SERVER_NAME), or pass base_url."
        )
    return PortalLink(url, expires_at)
