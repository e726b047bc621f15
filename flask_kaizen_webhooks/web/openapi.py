"""The OpenAPI 3.1 description of the integrators' API, served at ``<prefix>/openapi.json``.

Every route is declared once below as an :class:`Operation`; the component schemas are declared
in :mod:`.openapi_schemas`. :func:`build_openapi` assembles the document from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..version import __version__
from .openapi_schemas import (
    ERROR_DESCRIPTIONS,
    ID,
    MAX_PAGE_SIZE,
    REV,
    SCHEMAS,
    TOPIC_NAMES,
    Schema,
    Slot,
    json_content,
    object_schema,
    ref,
)

# Operations --------------------------------------------------------------------------------------


def _query(name: str, schema: Schema, description: str | None = None) -> Schema:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema}
    return parameter if description is None else {**parameter, "description": description}


IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}
PAGE = (
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}),
    _query("cursor", {"type": "string"}, "The next_cursor of the previous page (signed; opaque)."),
)


@dataclass(frozen=True)
class Success:
    """The answer of an operation that did what was asked."""

    status: int
    description: str
    schema: Schema


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One method of one path. Each ``{name}`` in the path is an id, declared once for the path;
    every operation but a public one also answers 401 and 403."""

    path: str
    method: str
    operation_id: str
    summary: str
    success: Success
    #: The statuses of its other answers, each an error of ``ERROR_DESCRIPTIONS``.
    errors: tuple[int, ...] = ()
    parameters: tuple[Schema, ...] = ()
    #: The component schema of its (required) JSON body, if it takes one.
    body: str | None = None
    #: Whether it is answered without credentials.
    public: bool = False
    #: Other answers with bodies of their own (not errors).
    also: tuple[Success, ...] = ()


OPERATIONS = (
    Operation(
        path="/registrations",
        method="get",
        operation_id="listRegistrations",
        summary="The caller's registrations",
        parameters=(_query("topic", {"type": "string"}), *PAGE),
        success=Success(200, "A page of registrations", ref("RegistrationList")),
        errors=(400, 422),
    ),
    Operation(
        path="/registrations",
        method="post",
        operation_id="createRegistration",
        summary="Register a URL (or null: pull-only) for a topic",
        body="RegistrationCreate",
        success=Success(201, "Created; Location names it", ref("IdRev")),
        errors=(400, 409, 413, 415, 422),
    ),
    Operation(
        path="/registrations/{registration_id}",
        method="get",
        operation_id="getRegistration",
        summary="One registration (no secret)",
        success=Success(200, "The registration", ref("Registration")),
        errors=(404,),
    ),
    Operation(
        path="/registrations/{registration_id}",
        method="put",
        operation_id="updateRegistration",
        summary="Replace it, with the current rev",
        parameters=(IF_MATCH,),
        body="RegistrationUpdate",
        success=Success(200, "Saved; the new rev", ref("IdRev")),
        errors=(400, 404, 409, 413, 415, 422),
    ),
    Operation(
        path="/registrations/{registration_id}",
        method="delete",
        operation_id="deleteRegistration",
        summary="Delete it, with the current rev",
        parameters=(IF_MATCH, _query("rev", {"type": "string"})),
        success=Success(
            200, "Deleted", object_schema({"id": ID, "rev": REV, "deleted": {"const": True}})
        ),
        errors=(404, 409, 422),
    ),
    Operation(
        path="/registrations/{registration_id}/rotate-secret",
        method="post",
        operation_id="rotateSecret",
        summary="Replace the secret; the previous one signs on for the overlap",
        parameters=(IF_MATCH,),
        body="Rotation",
        success=Success(200, "Rotated; a generated secret is shown once", ref("Rotated")),
        errors=(400, 404, 409, 413, 415, 422),
    ),
    Operation(
        path="/registrations/{registration_id}/deliveries",
        method="get",
        operation_id="listDeliveries",
        summary="Its deliveries, newest first",
        parameters=PAGE,
        success=Success(200, "A page of deliveries", ref("DeliveryList")),
        errors=(400, 404, 422),
    ),
    Operation(
        path="/registrations/{registration_id}/recover",
        method="post",
        operation_id="recover",
        summary="Queue again its failed (or all finished) deliveries of a time window",
        body="Recovery",
        success=Success(202, "Queued; how many", ref("Recovered")),
        errors=(400, 404, 409, 413, 415, 422, 429),
    ),
    Operation(
        path="/registrations/{registration_id}/feed",
        method="get",
        operation_id="readFeed",
        summary="Its deliveries in the order they were made, each as the signed body pushed",
        parameters=(
            _query("after", {"type": "string"}, "The next_cursor of the previous page."),
            PAGE[0],
        ),
        success=Success(200, "A page of the feed", ref("Feed")),
        errors=(400, 404, 422),
    ),
    Operation(
        path="/deliveries/{delivery_id}",
        method="get",
        operation_id="getDelivery",
        summary="One delivery with every attempt",
        success=Success(200, "The delivery", ref("DeliveryDetail")),
        errors=(404,),
    ),
    Operation(
        path="/deliveries/{delivery_id}/redeliver",
        method="post",
        operation_id="redeliver",
        summary="Queue it again now",
        success=Success(202, "Queued", object_schema({"id": ID, "status": {"const": "pending"}})),
        errors=(404, 409, 429),
    ),
    Operation(
        path="/topics",
        method="get",
        operation_id="listTopics",
        summary="Every topic with a sample payload",
        success=Success(
            200, "The topics", object_schema({"topics": {"type": "array", "items": ref("Topic")}})
        ),
    ),
    Operation(
        path="/test",
        method="post",
        operation_id="sendTest",
        summary="Send a topic's sample payload to the caller's registrations now",
        body="TestRequest",
        success=Success(
            200,
            "What each receiver answered",
            object_schema({"deliveries": {"type": "array", "items": ref("DeliveryResult")}}),
        ),
        errors=(400, 404, 413, 415, 422, 429),
    ),
    Operation(
        path="/portal-links",
        method="post",
        operation_id="createPortalLink",
        summary="A link opening the integrator portal for the caller",
        body="PortalLinkRequest",
        success=Success(201, "The link, and when it expires", ref("PortalLink")),
        errors=(400, 404, 413, 415, 422),
    ),
    Operation(
        path="/health",
        method="get",
        operation_id="health",
        summary="Whether delivery keeps up and this process's engine runs",
        public=True,
        success=Success(200, "Healthy", ref("Health")),
        also=(Success(503, "Behind, or this process's engine is not running", ref("Health")),),
    ),
    Operation(
        path="/openapi.json",
        method="get",
        operation_id="openapi",
        summary="This document",
        public=True,
        success=Success(200, "The OpenAPI document", {"type": "object"}),
    ),
)


# The document ------------------------------------------------------------------------------------

INFO = {
    "title": "flask-kaizen-webhooks",
    "version": __version__,
    "description": "Register webhooks, inspect their deliveries and send tests. Errors "
    'are always {"error": {"code", "message", "field"}}.',
}
SECURITY_SCHEMES = {
    "host": {
        "type": "http",
        "scheme": "bearer",
        "description": "However the host authenticates API users (typically a bearer token).",
    }
}


def build_openapi(prefix: str, topics: list[str], max_page_size: int) -> dict[str, Any]:
    """The OpenAPI document of the API mounted at ``prefix``."""
    document = {
        "openapi": "3.1.0",
        "info": INFO,
        "servers": [{"url": prefix or "/"}],
        "security": [{"host": []}],
        "paths": _paths(OPERATIONS),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": SECURITY_SCHEMES,
            "responses": {
                f"E{code}": {"description": text, **json_content(ref("Error"))}
                for code, text in ERROR_DESCRIPTIONS.items()
            },
        },
    }
    filled: dict[str, Any] = _fill(document, {TOPIC_NAMES: topics, MAX_PAGE_SIZE: max_page_size})
    return filled


def _paths(operations: Iterable[Operation]) -> Schema:
    """The path items: each path's ids, then its operations."""
    paths: Schema = {}
    for operation in operations:
        item = paths.setdefault(operation.path, _path_item(operation.path))
        item[operation.method] = _operation(operation)
    return paths


def _path_item(path: str) -> Schema:
    names = re.findall(r"\{(\w+)\}", path)
    if not names:
        return {}
    return {
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": ID} for name in names
        ]
    }


def _operation(operation: Operation) -> Schema:
    described: Schema = {"operationId": operation.operation_id, "summary": operation.summary}
    if operation.public:
        described["security"] = []
    if operation.parameters:
        described["parameters"] = list(operation.parameters)
    if operation.body is not None:
        described["requestBody"] = {"required": True, **json_content(ref(operation.body))}
    described["responses"] = _responses(operation)
    return described


def _responses(operation: Operation) -> Schema:
    success = operation.success
    responses: Schema = {
        str(answer.status): {"description": answer.description, **json_content(answer.schema)}
        for answer in (success, *operation.also)
    }
    errors = operation.errors if operation.public else (401, 403, *operation.errors)
    for code in errors:
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    return responses


def _fill(value: Any, slots: Mapping[Slot, Any]) -> Any:
    """A copy of ``value`` sharing nothing with it, each slot in it replaced by its value."""
    if isinstance(value, Slot):
        return _fill(slots[value], {})
    if isinstance(value, dict):
        return {key: _fill(item, slots) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_fill(item, slots) for item in value]
    return value
