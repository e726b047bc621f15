"""The integrators' JSON API: registrations and topics, one error format for everything."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.exceptions import HTTPException

from . import store
from .dispatch.sync import fan_out
from .errors import ApiError, ValidationError
from .extension import WebhooksState, get_state
from .limits import count_call
from .models import Delivery, DeliveryMode, DeliveryStatus, Registration, isoformat
from .openapi import build_openapi
from .topics import Mode
from .validation import (
    MAX_OVERLAP_SECONDS,
    RegistrationInput,
    check_text,
    parse_registration,
    parse_rotation,
    parse_test_request,
)

logger = logging.getLogger("flask_kaizen_webhooks")

blueprint = Blueprint("kaizen_webhooks", __name__)

Handler = Callable[..., Response | tuple[Response, int] | tuple[Response, int, dict[str, str]]]
ROUTED_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
CURSOR_SALT = "flask-kaizen-webhooks.cursor"
#: More digits than a whole number in a request may have.
MAX_DIGITS = 18
#: The length of the ids the extension makes (UUIDs).
ID_LENGTH = 36


# Plumbing ----------------------------------------------------------------------------------------


def _route(rule: str, endpoint: str, **handlers: Handler) -> None:
    """Route ``rule`` to one handler per method; other methods get a JSON 405."""
    allowed = sorted(handlers)

    def dispatch(**kwargs: Any) -> Any:
        method = "GET" if request.method == "HEAD" else request.method
        handler = handlers.get(method)
        if handler is None:
            raise ApiError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; use {', '.join(allowed)}.",
                headers={"Allow": ", ".join(allowed)},
            )
        return handler(**kwargs)

    blueprint.add_url_rule(rule, endpoint, dispatch, methods=ROUTED_METHODS)


@blueprint.errorhandler(ApiError)
def _api_error(error: ApiError) -> tuple[Response, int, dict[str, str]]:
    _rollback()
    return jsonify(error.to_dict()), error.code, error.extra_headers


@blueprint.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[Response, int]:
    _rollback()
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "_")
    message = error.description or error.name
    return jsonify({"error": {"code": code, "message": message, "field": None}}), status


@blueprint.errorhandler(Exception)
def _unexpected_error(error: Exception) -> tuple[Response, int]:
    _rollback()
    logger.exception("Unexpected error in the webhooks API")
    body = {"code": "internal_error", "message": "An unexpected error occurred.", "field": None}
    return jsonify({"error": body}), 500


def _rollback() -> None:
    state = get_state()
    try:
        state.database.session.rollback()
    except Exception:  # the session may be unusable after a database failure
        logger.exception("Rolling back the webhooks session failed")


def _state() -> WebhooksState:
    state: WebhooksState = g.kaizen_webhooks_state
    return state


def _owner() -> str:
    owner: str = g.kaizen_webhooks_owner
    return owner


@blueprint.before_request
def _authenticate() -> None:
    """Identify the caller and check their permission before any endpoint runs."""
    state = get_state()
    g.kaizen_webhooks_state = state
    if request.endpoint == "kaizen_webhooks.openapi":
        return  # the API's description is public
    extension = state.extension
    if extension.user_loader_callback is None or extension.permission_checker_callback is None:
        missing = [
            name
            for name, callback in (
                ("@webhooks.user_loader", extension.user_loader_callback),
                ("@webhooks.permission_checker", extension.permission_checker_callback),
            )
            if callback is None
        ]
        logger.warning("Webhooks API request refused: the host has not set %s", missing)
        raise ApiError(
            403,
            "not_configured",
            "The webhooks API is not configured: the host application must set "
            f"{' and '.join(missing)} (see the flask-kaizen-webhooks quickstart).",
        )
    user = extension.user_loader_callback()
    if user is None:
        raise ApiError(
            401,
            "unauthenticated",
            "Authentication is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not extension.permission_checker_callback(user):
        raise ApiError(
            403,
            "forbidden",
            "This user lacks the 'Allow user to manage web hooks' permission.",
        )
    g.kaizen_webhooks_owner = extension.owner_of(user)


@blueprint.before_request
def _check_path() -> None:
    """Refuse a path id no id can be (404 naming it): the ids the extension makes are UUIDs, so
    one that is longer or holds NUL, control characters or undecodable bytes cannot exist."""
    for name, value in (request.view_args or {}).items():
        if name.endswith("_id") and not _possible_id(value):
            raise ApiError(
                404,
                "not_found",
                f"No such {name.removesuffix('_id')}: the {name!r} in the path cannot be an id.",
                field=name,
            )


def _possible_id(value: str) -> bool:
    return len(value) <= ID_LENGTH and value.isascii() and value.isprintable()


def _query(name: str) -> str | None:
    """The query argument ``name``, or None; every query argument is read here, so text no
    field can hold (NUL, unpaired surrogates) is a 422 naming it."""
    value = request.args.get(name)
    return None if value is None else check_text(value, name)


def _json_body() -> dict[str, Any]:
    """The request's JSON object, read with the configured size limit."""
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            "Send the body as JSON with 'Content-Type: application/json'.",
        )
    limit = _state().settings.max_body_bytes
    too_large = ApiError(413, "body_too_large", f"The body is larger than {limit} bytes.")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise too_large
    try:
        document = json.loads(data, parse_constant=_refuse_constant, parse_int=_parse_int)
    except ValueError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "The body's JSON is nested too deeply.") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_body", "The body must be a JSON object.")
    return document


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(digits: str) -> int | float:
    """A JSON integer; one too long for ``int`` is read as a float (an infinity), so the field
    that holds it is refused by name rather than the whole body."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def _sent_rev(body_rev: str | None = None) -> str | None:
    """The rev the caller sent in the body, the ``rev`` query argument or ``If-Match``."""
    header = check_text(request.headers.get("If-Match", ""), "rev")
    header_rev = None
    if header:
        header_rev = header.strip().removeprefix("W/").strip('"')
    query_rev = _query("rev")
    sent = {rev for rev in (body_rev, query_rev, header_rev) if rev is not None}
    if len(sent) > 1:
        raise ValidationError(
            "ambiguous_rev", "Different revs were sent; send exactly one.", field="rev"
        )
    return sent.pop() if sent else None


def _with_etag(response: Response, rev: str) -> Response:
    response.set_etag(rev)
    return response


# Registrations -----------------------------------------------------------------------------------


def _registration_input(*, for_update: bool) -> RegistrationInput:
    """The request's registration document, validated."""
    state = _state()
    return parse_registration(
        _json_body(),
        topics=state.extension.topics,
        allow_http=state.settings.allow_http,
        policy=state.settings.address_policy,
        for_update=for_update,
    )


def create_registration() -> tuple[Response, int, dict[str, str]]:
    state = _state()
    data = _registration_input(for_update=False)
    assert data.secret is not None
    session = state.database.session
    registration = store.create_registration(
        session,
        owner=_owner(),
        topic=data.topic,
        url=data.url,
        sealed_secret=state.secrets.seal(data.secret),
        limit=state.settings.max_registrations_per_owner,
    )
    session.commit()
    location = url_for(".registration", registration_id=registration.id)
    response = _with_etag(jsonify(id=registration.id, rev=registration.rev), registration.rev)
    return response, 201, {"Location": location}


def list_registrations() -> Response:
    state = _state()
    owner = _owner()
    topic = _query("topic") or None
    limit = _limit(state)
    scope = {"kind": "registrations", "owner": owner, "topic": topic}
    after = _decode_cursor(scope)
    rows = store.list_registrations(
        state.database.session, owner=owner, topic=topic, after=after, limit=limit + 1
    )
    return _page(rows, limit, scope)


def _page(rows: Sequence[Registration | Delivery], limit: int, scope: dict[str, Any]) -> Response:
    """A page of ``rows`` (fetched with one extra) and the cursor to the next page."""
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = _serializer().dumps({**scope, "c": last.created_at.isoformat(), "i": last.id})
    return jsonify(items=[row.to_public_dict() for row in page], next_cursor=next_cursor)


def get_registration(registration_id: str) -> Response:
    registration = store.get_registration(
        _state().database.session, owner=_owner(), registration_id=registration_id
    )
    return _with_etag(jsonify(registration.to_public_dict()), registration.rev)


def update_registration(registration_id: str) -> Response:
    state = _state()
    data = _registration_input(for_update=True)
    session = state.database.session
    registration = store.update_registration(
        session,
        owner=_owner(),
        registration_id=registration_id,
        rev=_sent_rev(data.rev),
        topic=data.topic,
        url=data.url,
        sealed_secret=None if data.secret is None else state.secrets.seal(data.secret),
        state=data.state,
        overlap=timedelta(seconds=state.settings.secret_overlap),
    )
    session.commit()
    return _with_etag(jsonify(id=registration.id, rev=registration.rev), registration.rev)


def rotate_secret(registration_id: str) -> Response:
    """Replace the secret; the previous one keeps signing for the overlap."""
    state = _state()
    document = _json_body()
    data = parse_rotation(document, max_overlap=MAX_OVERLAP_SECONDS)
    generated = data.secret is None
    secret = secrets.token_urlsafe(32) if data.secret is None else data.secret
    overlap = state.settings.secret_overlap if data.overlap is None else data.overlap
    session = state.database.session
    current = store.get_registration(session, owner=_owner(), registration_id=registration_id)
    registration = store.update_registration(
        session,
        owner=_owner(),
        registration_id=registration_id,
        rev=_sent_rev(data.rev),
        topic=current.topic,
        url=current.url,
        sealed_secret=state.secrets.seal(secret),
        overlap=timedelta(seconds=overlap),
    )
    session.commit()
    body: dict[str, Any] = {
        "id": registration.id,
        "rev": registration.rev,
        "secret_version": registration.secret_version,
        "previous_secret_valid_until": isoformat(registration.previous_secret_until),
    }
    if generated:
        body["secret"] = secret  # shown this once, because the caller asked us to make it
    return _with_etag(jsonify(body), registration.rev)


def delete_registration(registration_id: str) -> Response:
    session = _state().database.session
    deleted: Registration = store.delete_registration(
        session, owner=_owner(), registration_id=registration_id, rev=_sent_rev()
    )
    session.commit()
    return jsonify(id=deleted.id, rev=deleted.rev, deleted=True)


def _limit(state: WebhooksState) -> int:
    raw = _query("limit")
    if raw is None:
        return state.settings.page_size
    maximum = state.settings.max_page_size
    limit = _whole_number(raw)
    if limit is None or not 1 <= limit <= maximum:
        raise ValidationError(
            "invalid_limit", f"'limit' must be a whole number from 1 to {maximum}.", field="limit"
        )
    return limit


def _whole_number(text: str) -> int | None:
    """``text`` as a whole number written in ASCII digits; None if it is not one, or if it has
    more digits than any sensible number (``int`` refuses thousands of them)."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_DIGITS else None


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.secret_key or "", salt=CURSOR_SALT)


def _decode_cursor(scope: dict[str, Any]) -> store.PagePosition | None:
    """The position a ``cursor`` argument names; it must come from a listing of ``scope``."""
    cursor = _query("cursor")
    if not cursor:
        return None
    invalid = ApiError(400, "invalid_cursor", "The cursor is invalid.", field="cursor")
    try:
        data = _serializer().loads(cursor)
        if any(data.get(key) != value for key, value in scope.items()):
            raise invalid
        return store.PagePosition(datetime.fromisoformat(data["c"]), str(data["i"]))
    except (BadSignature, KeyError, TypeError, ValueError, AttributeError):
        raise invalid from None


# Deliveries --------------------------------------------------------------------------------------


def send_test() -> Response:
    """Send the topic's sample payload to the caller's registrations now; answer the results."""
    state = _state()
    data = parse_test_request(_json_body(), topics=state.extension.topics)
    topic = state.extension.topics.get(data.topic)
    assert topic is not None
    targets = store.active_targets(
        state.database.session,
        topic=data.topic,
        owner=_owner(),
        registration_id=data.registration_id,
    )
    state.database.session.rollback()  # end the read before the (slow) sending
    if not targets:
        raise ApiError(
            404,
            "no_registration",
            f"You have no active registration for {data.topic!r} to test"
            + (" with that id." if data.registration_id else "."),
            field="registration_id" if data.registration_id else "topic",
        )
    most = state.settings.test_max_targets
    if len(targets) > most:
        raise ValidationError(
            "too_many_targets",
            f"You have {len(targets)} active registrations for {data.topic!r}; a test goes to "
            f"{most} at most: name one with 'registration_id'.",
            field="registration_id",
            limit=most,
        )
    _count_call("test", state.settings.test_calls_per_minute)
    timeout = (
        state.settings.sync_timeout if topic.mode is Mode.SYNC else state.settings.async_timeout
    )
    results = fan_out(
        current_app._get_current_object(),  # type: ignore[attr-defined]
        state,
        topic=data.topic,
        document=dict(topic.sample_payload),
        targets=targets,
        mode=DeliveryMode.TEST,
        timeout=timeout,
        client=state.test_client,
    )
    return jsonify(deliveries=[result.to_dict() for result in results])


def list_deliveries(registration_id: str) -> Response:
    state = _state()
    owner = _owner()
    session = state.database.session
    store.get_registration(session, owner=owner, registration_id=registration_id)
    limit = _limit(state)
    scope = {"kind": "deliveries", "owner": owner, "registration": registration_id}
    before = _decode_cursor(scope)
    rows = store.list_deliveries(
        session, owner=owner, registration_id=registration_id, before=before, limit=limit + 1
    )
    return _page(rows, limit, scope)


def get_delivery(delivery_id: str) -> Response:
    session = _state().database.session
    delivery = store.get_delivery(session, owner=_owner(), delivery_id=delivery_id)
    body = delivery.to_public_dict()
    body["payload"] = json.loads(delivery.payload)
    body["attempts_log"] = [
        attempt.to_public_dict() for attempt in store.attempts_of(session, delivery.id)
    ]
    return jsonify(body)


def _count_call(kind: str, per_minute: int) -> None:
    """Count the caller's call of ``kind``: 429 past ``per_minute`` (see :mod:`.limits`)."""
    state = _state()
    count_call(state.database, state.clock, kind=kind, owner=_owner(), per_minute=per_minute)


def redeliver(delivery_id: str) -> tuple[Response, int]:
    state = _state()
    _count_call("redeliver", state.settings.redeliver_calls_per_minute)
    session = state.database.session
    store.redeliver(session, owner=_owner(), delivery_id=delivery_id, now=state.clock.now())
    session.commit()
    state.dispatcher.submit([delivery_id])
    return jsonify(id=delivery_id, status=DeliveryStatus.PENDING), 202


# Topics ------------------------------------------------------------------------------------------


def list_topics() -> Response:
    return jsonify(topics=[topic.to_dict() for topic in _state().extension.topics])


def openapi_document() -> Response:
    state = _state()
    return jsonify(
        build_openapi(
            state.settings.url_prefix,
            state.extension.topics.names(),
            state.settings.max_page_size,
        )
    )


def _unknown_path(path: str) -> Response:
    raise ApiError(404, "not_found", f"No such endpoint: {request.path}.")


_route("/registrations", "registrations", GET=list_registrations, POST=create_registration)
_route(
    "/registrations/<registration_id>",
    "registration",
    GET=get_registration,
    PUT=update_registration,
    DELETE=delete_registration,
)
_route("/registrations/<registration_id>/rotate-secret", "rotate_secret", POST=rotate_secret)
_route("/topics", "topics", GET=list_topics)
_route("/openapi.json", "openapi", GET=openapi_document)
_route("/test", "test", POST=send_test)
_route("/registrations/<registration_id>/deliveries", "deliveries", GET=list_deliveries)
_route("/deliveries/<delivery_id>", "delivery", GET=get_delivery)
_route("/deliveries/<delivery_id>/redeliver", "redeliver", POST=redeliver)
blueprint.add_url_rule("/<path:path>", "unknown", _unknown_path, methods=ROUTED_METHODS)
