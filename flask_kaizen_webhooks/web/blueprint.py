"""The API's blueprint and what every request goes through: the caller identified and checked,
path ids sanity-checked, one JSON error format for everything, and a JSON 405 for a method a
route does not take."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import ApiError
from ..state import WebhooksState, get_state
from .openapi import Operation

logger = logging.getLogger("flask_kaizen_webhooks")

blueprint = Blueprint("kaizen_webhooks", __name__)

Handler = Callable[..., Response | tuple[Response, int] | tuple[Response, int, dict[str, str]]]
ROUTED_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
#: Endpoints answered without credentials: the API's description, and its health.
PUBLIC = frozenset({"kaizen_webhooks.openapi", "kaizen_webhooks.health"})
#: The length of the ids the extension makes (UUIDs).
ID_LENGTH = 36


def route(rule: str, endpoint: str, **handlers: Handler) -> None:
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


def route_operations(operations: Iterable[Operation], handlers: Mapping[str, Handler]) -> None:
    """Route every declared operation to its handler (by ``operationId``), one rule per path:
    ``/registrations/{registration_id}`` becomes the rule ``/registrations/<registration_id>``
    and the endpoint ``registration``."""
    by_path: dict[str, dict[str, Handler]] = {}
    for operation in operations:
        methods = by_path.setdefault(operation.path, {})
        methods[operation.method.upper()] = handlers[operation.operation_id]
    for path, methods in by_path.items():
        rule = path.replace("{", "<").replace("}", ">")
        route(rule, endpoint_of(path), **methods)


def endpoint_of(path: str) -> str:
    """A path's endpoint: its last part, an id named by what it identifies (``url_for`` names)."""
    last = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
    if last.startswith("{"):
        last = last.strip("{}").removesuffix("_id")
    return last.replace("-", "_")


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


def current_state() -> WebhooksState:
    state: WebhooksState = g.kaizen_webhooks_state
    return state


def current_owner() -> str:
    owner: str = g.kaizen_webhooks_owner
    return owner


@blueprint.before_request
def _authenticate() -> None:
    """Identify the caller and check their permission before any endpoint runs."""
    state = get_state()
    g.kaizen_webhooks_state = state
    if request.endpoint in PUBLIC:
        return
    callbacks = state.callbacks
    if callbacks.user_loader is None or callbacks.permission_checker is None:
        missing = [
            name
            for name, callback in (
                ("@webhooks.user_loader", callbacks.user_loader),
                ("@webhooks.permission_checker", callbacks.permission_checker),
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
    user = callbacks.user_loader()
    if user is None:
        raise ApiError(
            401,
            "unauthenticated",
            "Authentication is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not callbacks.permission_checker(user):
        raise ApiError(
            403,
            "forbidden",
            "This user lacks the 'Allow user to manage web hooks' permission.",
        )
    g.kaizen_webhooks_owner = callbacks.owner_of(user)


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


def _unknown_path(path: str) -> Response:
    raise ApiError(404, "not_found", f"No such endpoint: {request.path}.")


blueprint.add_url_rule("/<path:path>", "unknown", _unknown_path, methods=ROUTED_METHODS)
