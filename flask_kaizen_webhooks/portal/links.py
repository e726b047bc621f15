"""Making portal links: for the host (``webhooks.portal_link``), the API (``POST
/portal-links``) and the command line (``flask webhooks portal-link``)."""

from __future__ import annotations

import logging
from functools import cache
from urllib.parse import urlsplit

from flask import Flask, has_request_context, url_for

from ..errors import WebhooksError
from ..state import get_state
from . import access
from .access import PortalLink

logger = logging.getLogger("flask_kaizen_webhooks")

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
    if base is None and not has_request_context() and app.config.get("SERVER_NAME"):
        base = f"{app.config['PREFERRED_URL_SCHEME']}://{app.config['SERVER_NAME']}"
        base += (app.config.get("APPLICATION_ROOT") or "/").rstrip("/")
    if base is not None:
        url = _address(app, base, token)
    elif has_request_context():
        _warn_of_the_host_header()
        url = url_for(ENTER, t=token, _external=True)
    else:
        raise WebhooksError(
            "A portal link made outside a request needs the host's address: set "
            "KAIZEN_WEBHOOKS_PORTAL_BASE_URL (or SERVER_NAME), or pass base_url."
        )
    return PortalLink(url, expires_at)


def _address(app: Flask, base: str, token: str) -> str:
    """The link's address under ``base`` (scheme, host, and the path the app is mounted at),
    built from the app's routes alone: no request context is pushed, so none of the host's
    request hooks run."""
    parts = urlsplit(base)
    adapter = app.url_map.bind(parts.netloc, script_name=parts.path or "/", url_scheme=parts.scheme)
    return adapter.build(ENTER, {"t": token}, force_external=True)


@cache
def _warn_of_the_host_header() -> None:
    """Once per process: a link made from the request's own address carries whatever ``Host``
    its caller sent."""
    logger.warning(
        "Portal links are made from each request's Host header; set "
        "KAIZEN_WEBHOOKS_PORTAL_BASE_URL to the host's public address so that a caller cannot "
        "choose the address of the links it is given."
    )
