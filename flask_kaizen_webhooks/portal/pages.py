"""The integrator portal's pages: server-rendered, one owner's registrations and deliveries only
(exactly what the JSON API shows them), every change a form with its CSRF token."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from flask import redirect, request, url_for
from werkzeug.wrappers import Response

from ..delivery.sync import DeliveryResult
from ..errors import ApiError, PortalRefused
from ..storage import reads, registrations
from ..storage.tables import DeliveryStatus, Registration, RegistrationState
from ..web import actions
from ..web.blueprint import current_state
from ..web.inputs import decode_cursor, encode_cursor
from ..web.validation import parse_registration
from .blueprint import (
    NO_SUCH_PAGE,
    blueprint,
    current_flask,
    current_owner,
    page,
    rollback,
)

__all__ = ["blueprint"]

#: Deliveries on one page of an endpoint.
PAGE_SIZE = 25
#: The statuses an endpoint's deliveries can be filtered by.
STATUSES = tuple(status.value for status in DeliveryStatus)
#: What a page says after a change, by the ``done`` argument of the redirect to it.
NOTICES = {
    "deleted": "The endpoint was deleted; its pending deliveries will not be sent.",
    "enabled": "The endpoint is enabled: new events are delivered to it again.",
    "disabled": "The endpoint is disabled: no webhooks are sent to it until you enable it.",
    "redelivered": "The delivery was queued again: its new attempt appears below shortly.",
}
#: What the portal says, by the API's error code, where the API's words name its own fields.
IN_PORTAL_WORDS = {
    "rev_conflict": "The endpoint was changed meanwhile (in another page, or through the API): "
    "reload the page and try again.",
    "registration_disabled": "The endpoint is disabled: enable it first, then redeliver.",
    "registration_deleted": "The endpoint of this delivery was deleted: it cannot be redelivered.",
    "delivery_in_flight": "An attempt of this delivery is under way: try again once it ends.",
    "pull_only": "The endpoint is pull-only: its deliveries are kept in its feed, never sent.",
}


# Endpoints --------------------------------------------------------------------------------------


@blueprint.get("/")
def endpoints() -> Response:
    return _endpoints_page()


def _endpoints_page(
    status: int = 200, *, error: ApiError | None = None, form: Mapping[str, str] | None = None
) -> Response:
    state = current_state()
    with state.database.independent_session() as session:  # the host's is left alone
        rows = reads.list_registrations(
            session,
            owner=current_owner(),
            topic=None,
            after=None,
            limit=state.settings.max_registrations_per_owner,
        )
        latest = {row.id: reads.latest_delivery(session, row.id) for row in rows}
    return page(
        "endpoints.html",
        status,
        registrations=rows,
        latest=latest,
        topics=list(state.topics),
        error=_in_portal_words(error),
        form=form or {},
        done=NOTICES.get(request.args.get("done", "")),
    )


@blueprint.post("/endpoints")
def create_endpoint() -> Response:
    state = current_state()
    form = {name: request.form.get(name, "").strip() for name in ("topic", "url", "secret")}
    generated = None
    if not form["secret"]:
        generated = form["secret"] = actions.new_secret()
    try:
        data = parse_registration(
            form,
            topics=state.topics,
            allow_http=state.settings.allow_http,
            policy=state.settings.address_policy,
            for_update=False,
        )
        assert data.secret is not None
        registration = actions.register(
            state, current_owner(), topic=data.topic, url=data.url, secret=data.secret
        )
    except ApiError as error:
        rollback()
        kept = {**form, "secret": "" if generated else form["secret"]}
        return _endpoints_page(error.code, error=error, form=kept)
    return page("created.html", 201, registration=registration, secret=generated)


def _registration(registration_id: str) -> Registration:
    """The owner's registration (read on a session of the extension's own); a 404 page if it
    does not exist or is another owner's."""
    with current_state().database.independent_session() as session:
        try:
            return registrations.get_registration(
                session, owner=current_owner(), registration_id=registration_id
            )
        except ApiError:
            raise PortalRefused(NO_SUCH_PAGE, 404) from None


@blueprint.get("/endpoints/<registration_id>")
def endpoint(registration_id: str) -> Response:
    return _endpoint_page(registration_id)


def _endpoint_page(
    registration_id: str,
    status: int = 200,
    *,
    error: ApiError | None = None,
    tested: list[Any] | None = None,
) -> Response:
    state = current_state()
    registration = _registration(registration_id)
    shown = _status_filter()
    owner = current_owner()
    scope = {"kind": "portal-deliveries", "owner": owner, "r": registration_id, "s": shown}
    try:
        before = decode_cursor(scope, "before")
    except ApiError:
        raise PortalRefused("That page link is not valid.", 400) from None
    with state.database.independent_session() as session:
        rows = reads.list_deliveries(
            session,
            owner=owner,
            registration_id=registration_id,
            before=before,
            limit=PAGE_SIZE + 1,
            status=shown,
        )
    deliveries, more = rows[:PAGE_SIZE], len(rows) > PAGE_SIZE
    older = None
    if more:
        cursor = encode_cursor(scope, deliveries[-1])
        older = url_for(".endpoint", registration_id=registration_id, status=shown, before=cursor)
    return page(
        "endpoint.html",
        status,
        registration=registration,
        deliveries=deliveries,
        statuses=STATUSES,
        shown=shown,
        older=older,
        first_page=before is not None,
        error=_in_portal_words(error),
        tested=tested,
        feed=url_for("kaizen_webhooks.feed", registration_id=registration_id),
        retention_days=state.settings.retention_days,
        done=NOTICES.get(request.args.get("done", "")),
    )


def _status_filter() -> str | None:
    shown = request.args.get("status") or None
    if shown is not None and shown not in STATUSES:
        raise PortalRefused(f"Pick a status among {', '.join(STATUSES)}.", 400)
    return shown


def _back_to_endpoint(registration_id: str, done: str | None = None) -> Response:
    """Back to the endpoint's page after a change (a new request: reloading it changes
    nothing)."""
    return redirect(url_for(".endpoint", registration_id=registration_id, done=done), 303)


def _rev() -> str | None:
    return request.form.get("rev") or None


@blueprint.post("/endpoints/<registration_id>/state")
def change_state(registration_id: str) -> Response:
    wanted = request.form.get("state")
    if wanted not in (RegistrationState.ACTIVE, RegistrationState.DISABLED):
        raise PortalRefused("Choose to enable or to disable the endpoint.", 400)
    try:
        actions.change_state(
            current_state(), current_owner(), registration_id, rev=_rev(), to=wanted
        )
    except ApiError as error:
        rollback()
        return _endpoint_page(registration_id, error.code, error=error)
    done = "enabled" if wanted == RegistrationState.ACTIVE else "disabled"
    return _back_to_endpoint(registration_id, done)


@blueprint.post("/endpoints/<registration_id>/rotate")
def rotate(registration_id: str) -> Response:
    state = current_state()
    try:
        rotated = actions.rotate(state, current_owner(), registration_id, rev=_rev())
    except ApiError as error:
        rollback()
        return _endpoint_page(registration_id, error.code, error=error)
    return page(
        "rotated.html",
        registration=rotated.registration,
        secret=rotated.generated_secret,
        overlap_hours=state.settings.secret_overlap / 3600,
    )


@blueprint.post("/endpoints/<registration_id>/test")
def send_test(registration_id: str) -> Response:
    state = current_state()
    registration = _registration(registration_id)
    topic = registration.topic
    try:
        results = actions.send_test(state, current_flask(), current_owner(), topic, registration_id)
    except ApiError as error:
        rollback()
        return _endpoint_page(registration_id, error.code, error=error)
    return _endpoint_page(registration_id, tested=[_shown_result(result) for result in results])


def _shown_result(result: DeliveryResult) -> dict[str, Any]:
    shown: dict[str, Any] = result.to_dict()
    answer = shown["response"]
    shown["answer"] = None if answer is None else json.dumps(answer, indent=2)[:4000]
    return shown


@blueprint.post("/endpoints/<registration_id>/delete")
def delete_endpoint(registration_id: str) -> Response:
    try:
        actions.delete(current_state(), current_owner(), registration_id, rev=_rev())
    except ApiError as error:
        rollback()
        return _endpoint_page(registration_id, error.code, error=error)
    return redirect(url_for(".endpoints", done="deleted"), 303)


# Deliveries -------------------------------------------------------------------------------------


@blueprint.get("/deliveries/<delivery_id>")
def delivery(delivery_id: str) -> Response:
    return _delivery_page(delivery_id)


def _delivery_page(delivery_id: str, status: int = 200, error: ApiError | None = None) -> Response:
    state = current_state()
    with state.database.independent_session() as session:
        try:
            found = reads.get_delivery(session, owner=current_owner(), delivery_id=delivery_id)
        except ApiError:
            raise PortalRefused(NO_SUCH_PAGE, 404) from None
        attempts = reads.attempts_of(session, found.id)
    payload = json.dumps(json.loads(found.payload), indent=2, ensure_ascii=False)
    return page(
        "delivery.html",
        status,
        delivery=found,
        attempts=attempts,
        payload=payload,
        error=_in_portal_words(error),
        done=NOTICES.get(request.args.get("done", "")),
    )


@blueprint.post("/deliveries/<delivery_id>/redeliver")
def redeliver(delivery_id: str) -> Response:
    try:
        actions.redeliver(current_state(), current_owner(), delivery_id)
    except ApiError as error:
        rollback()
        if error.code == 404:
            raise PortalRefused(NO_SUCH_PAGE, 404) from None
        return _delivery_page(delivery_id, error.code, error)
    return redirect(url_for(".delivery", delivery_id=delivery_id, done="redelivered"), 303)


def _in_portal_words(error: ApiError | None) -> ApiError | None:
    """``error``, in the portal's words where the API's would not fit a button."""
    if error is not None and error.error_code in IN_PORTAL_WORDS:
        error.message = IN_PORTAL_WORDS[error.error_code]
    return error


# The event catalog ------------------------------------------------------------------------------


@blueprint.get("/events")
def events() -> Response:
    topics = [
        {**topic.to_dict(), "sample": json.dumps(topic.to_dict()["sample_payload"], indent=2)}
        for topic in current_state().topics
    ]
    retried_for = _span(sum(current_state().settings.retry_schedule))
    return page("events.html", topics=topics, snippets=SNIPPETS, retried_for=retried_for)


def _span(seconds: float) -> str:
    """A span of time in words: hours (to a tenth) from an hour on, else minutes or seconds."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 60:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:g} seconds"


def _snippet(name: str) -> str:
    return (
        files(__package__ or "flask_kaizen_webhooks.portal")
        .joinpath("snippets", name)
        .read_text(encoding="utf-8")
    )


#: How to verify a webhook, as the manual shows it too: (language, code).
SNIPPETS = [("Python", _snippet("python.txt")), ("Node.js", _snippet("nodejs.txt"))]
