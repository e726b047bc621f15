"""Reading an API request: its JSON body within the size limit, query arguments, the rev sent,
the page size and the pagination cursor, each bad input a precise 4xx; and writing a page."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from flask import Response, current_app, jsonify, request
from itsdangerous import BadSignature, URLSafeSerializer

from ..errors import ApiError, ValidationError
from ..state import WebhooksState
from ..storage.rows import PagePosition
from ..storage.tables import Delivery, Registration
from .blueprint import current_state
from .validation import check_text

CURSOR_SALT = "flask-kaizen-webhooks.cursor"
#: More digits than a whole number in a request may have.
MAX_DIGITS = 18


def query(name: str) -> str | None:
    """The query argument ``name``, or None; every query argument is read here, so text no
    field can hold (NUL, unpaired surrogates) is a 422 naming it."""
    value = request.args.get(name)
    return None if value is None else check_text(value, name)


def json_body() -> dict[str, Any]:
    """The request's JSON object, read with the configured size limit."""
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            "Send the body as JSON with 'Content-Type: application/json'.",
        )
    limit = current_state().settings.max_body_bytes
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


def sent_rev(body_rev: str | None = None) -> str | None:
    """The rev the caller sent in the body, the ``rev`` query argument or ``If-Match``."""
    header = check_text(request.headers.get("If-Match", ""), "rev")
    header_rev = None
    if header:
        header_rev = header.strip().removeprefix("W/").strip('"')
    query_rev = query("rev")
    sent = {rev for rev in (body_rev, query_rev, header_rev) if rev is not None}
    if len(sent) > 1:
        raise ValidationError(
            "ambiguous_rev", "Different revs were sent; send exactly one.", field="rev"
        )
    return sent.pop() if sent else None


def with_etag(response: Response, rev: str) -> Response:
    response.set_etag(rev)
    return response


def page_limit(state: WebhooksState) -> int:
    raw = query("limit")
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


def decode_cursor(scope: dict[str, Any], name: str = "cursor") -> PagePosition | None:
    """The position the ``name`` argument names; it must come from a listing of ``scope``."""
    cursor = query(name)
    if not cursor:
        return None
    invalid = ApiError(400, "invalid_cursor", "The cursor is invalid.", field=name)
    try:
        data = _serializer().loads(cursor)
        if any(data.get(key) != value for key, value in scope.items()):
            raise invalid
        return PagePosition(datetime.fromisoformat(data["c"]), str(data["i"]))
    except (BadSignature, KeyError, TypeError, ValueError, AttributeError):
        raise invalid from None


def page(rows: Sequence[Registration | Delivery], limit: int, scope: dict[str, Any]) -> Response:
    """A page of ``rows`` (fetched with one extra) and the cursor to the next page."""
    page = rows[:limit]
    next_cursor = encode_cursor(scope, page[-1]) if len(rows) > limit else None
    return jsonify(items=[row.to_public_dict() for row in page], next_cursor=next_cursor)


def encode_cursor(scope: dict[str, Any], last: Registration | Delivery) -> str:
    """The cursor of the position after ``last`` in a listing of ``scope`` (signed)."""
    return _serializer().dumps({**scope, "c": last.created_at.isoformat(), "i": last.id})
