"""The portal's blueprint and what every page goes through: a link (see :mod:`.access`),
``/enter?t=<token>``, opens a session held in a cookie scoped to the portal's path; every other
page reads it and every form is checked; refusals and errors are pages too."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    make_response,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from ..clock import as_utc
from ..errors import ApiError, PortalRefused
from ..state import get_state
from ..storage import portal_sessions
from ..web.blueprint import current_state
from . import access

logger = logging.getLogger("flask_kaizen_webhooks")

blueprint = Blueprint(
    "kaizen_webhooks_portal",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: What a page of something that does not exist, or is another owner's, says.
NO_SUCH_PAGE = "There is no such page, or it is not yours to see."
#: The pages open without a session.
OPEN_ENDPOINTS = {"kaizen_webhooks_portal.enter", "kaizen_webhooks_portal.static"}
#: The largest form a portal page takes, in bytes.
MAX_FORM_BYTES = 16 * 1024
#: The values of ``Sec-Fetch-Site`` by which a browser says a request comes from another site
#: (``same-site``: another origin of the same site, such as a sibling subdomain).
CROSS_SITE = ("cross-site", "same-site")
#: What every portal answer carries: nothing loads from elsewhere, nothing frames it, no
#: address leaks to another site, and nothing is cached. Addresses are sent within the site,
#: so that browsers send the portal's own forms with their ``Origin`` (under ``no-referrer``
#: they send ``Origin: null``); the page a link opens, whose address carries the link's
#: token, sends none (see :func:`enter`).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# Who is asking ----------------------------------------------------------------------------------


def current_owner() -> str:
    owner: str = g.kaizen_webhooks_portal_owner
    return owner


def current_flask() -> Flask:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


@blueprint.before_request
def _open_session() -> None:
    """Find the session (and its owner) of every page but the link's; check every form."""
    state = get_state()
    g.kaizen_webhooks_state = state
    if request.endpoint in OPEN_ENDPOINTS:
        return
    app = current_flask()
    session_id = access.read_session_cookie(app, request.cookies.get(access.COOKIE))
    owner = None
    if session_id is not None:
        with state.database.independent_session() as session:
            owner = portal_sessions.live_owner(
                session, session_id=session_id, now=state.clock.now()
            )
    if session_id is None or owner is None:
        raise PortalRefused(
            "You are not signed in to the webhooks portal, or your session has ended. Open the "
            "portal with a new link."
        )
    g.kaizen_webhooks_portal_session = session_id
    g.kaizen_webhooks_portal_owner = owner
    if request.method == "POST":
        _check_form(app, session_id)
    for name, value in (request.view_args or {}).items():
        if name.endswith("_id") and not _possible_id(value):
            raise PortalRefused(NO_SUCH_PAGE, 404)


def _check_form(app: Flask, session_id: str) -> None:
    """A change comes from a portal page: its size is sensible, its CSRF token is the
    session's, and the browser says it comes from this site."""
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise PortalRefused("The form sent is larger than any of the portal's forms.", 413)
    if not _from_this_site():
        raise PortalRefused("The form was sent from another site; it was refused.")
    if not access.csrf_matches(app, session_id, request.form.get("csrf_token")):
        raise PortalRefused(
            "The form was sent without its security token, or with a stale one. Go back, "
            "reload the page and try again."
        )


def _from_this_site() -> bool:
    """Whether the browser's headers, when it sends them, place the form on this site: an
    ``Origin`` of this host or of ``KAIZEN_WEBHOOKS_PORTAL_BASE_URL``'s (the host only: behind
    a proxy that ends TLS, the app may see http where the browser says https), and no
    ``Sec-Fetch-Site`` of another site. ``Origin: null`` tells nothing. Neither header is
    needed (older browsers send none): the CSRF token is."""
    origin = request.headers.get("Origin")
    if origin not in (None, "null"):
        public = urlsplit(get_state().settings.portal_base_url or "").netloc
        if urlsplit(origin).netloc not in (request.host, public):
            return False
    return request.headers.get("Sec-Fetch-Site") not in CROSS_SITE


def _possible_id(value: str) -> bool:
    return len(value) <= 36 and value.isascii() and value.isprintable()


@blueprint.after_request
def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@blueprint.app_template_filter("kaizen_time")
def _time(moment: datetime | None) -> str:
    """A time as the portal shows it: UTC, to the second."""
    if moment is None:
        return "—"
    return as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


@blueprint.app_template_filter("kaizen_short_id")
def _short_id(value: str) -> str:
    """An id as the portal's lists show it: its last group, which is random. (A delivery id
    starts with the time it was made, the same in every id made within a minute.)"""
    return "…" + value.rsplit("-", 1)[-1]


@blueprint.context_processor
def _page_context() -> dict[str, Any]:
    session_id = g.get("kaizen_webhooks_portal_session")
    return {
        "csrf_token": access.csrf_token(current_flask(), session_id) if session_id else "",
        "signed_in": session_id is not None,
        "owner": g.get("kaizen_webhooks_portal_owner") if session_id else None,
    }


# Refusals and errors ----------------------------------------------------------------------------


def page(template: str, status: int = 200, **context: Any) -> Response:
    response = make_response(render_template(f"kaizen_webhooks/portal/{template}", **context))
    response.status_code = status
    return response


@blueprint.errorhandler(PortalRefused)
def _refused(error: PortalRefused) -> Response:
    if error.status == 403:
        return page("refused.html", 403, reason=str(error))
    titles = {400: "Bad request", 404: "Not found", 413: "Too large"}
    title = titles.get(error.status, "Refused")
    return page("error.html", error.status, title=title, message=str(error))


@blueprint.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 404:
        message = "There is no such page, or it is not yours to see."
    elif isinstance(error, ApiError):
        message = error.message
    else:
        message = error.description or error.name
    return page("error.html", status, title=error.name, message=message)


@blueprint.errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    rollback()
    logger.exception("Unexpected error in the webhooks portal")
    return page("error.html", 500, title="Something went wrong", message="Please try again.")


def rollback() -> None:
    """End the transaction of a change that failed in the request's session (the host's, with
    ``KaizenWebhooks(app, db=db)``), as the API does."""
    try:
        get_state().database.session.rollback()
    except Exception:  # the session may be unusable after a database failure
        logger.exception("Rolling back the webhooks session failed")


# Entering and leaving ---------------------------------------------------------------------------


@blueprint.get("/enter")
def enter() -> Response:
    """Follow a link: open its session, set the cookie, and go on to the endpoints. The page in
    between is one of this site's, so the (SameSite=Strict) cookie goes with the next request."""
    state = get_state()
    app = current_flask()
    grant = access.read_link(app, request.args.get("t", ""), state.clock.now())
    with state.database.writing() as session:
        opened = portal_sessions.open_session(
            session,
            link_id=grant.link_id,
            owner=grant.owner,
            expires_at=grant.expires_at,
            now=state.clock.now(),
        )
    if not opened:
        raise PortalRefused(
            "This portal link was used to sign out: it opens nothing more. Ask for a new one."
        )
    response = page("enter.html", next_url=url_for(".endpoints"))
    response.headers["Referrer-Policy"] = "no-referrer"
    response.set_cookie(
        access.COOKIE,
        access.session_cookie(app, grant),
        expires=grant.expires_at,
        path=url_for(".endpoints"),
        secure=_secure_cookie(),
        httponly=True,
        samesite="Strict",
    )
    return response


def _secure_cookie() -> bool:
    """Whether the session cookie goes over https only: when the request came over https, or
    the host's public address is https (behind a proxy that ends TLS, the app may see http)."""
    base = get_state().settings.portal_base_url or ""
    return request.is_secure or base.startswith("https:")


@blueprint.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(path: str) -> Response:
    """Any other address under the portal, or a page asked with a method it does not take."""
    raise PortalRefused(NO_SUCH_PAGE, 404)


@blueprint.post("/sign-out")
def sign_out() -> Response:
    """End the session: neither the cookie nor the link that opened it open anything more."""
    state = current_state()
    with state.database.writing() as session:
        portal_sessions.end_session(session, session_id=g.kaizen_webhooks_portal_session)
    g.kaizen_webhooks_portal_session = None
    response = page("signed_out.html")
    response.delete_cookie(
        access.COOKIE, path=url_for(".endpoints"), secure=_secure_cookie(), httponly=True
    )
    return response
