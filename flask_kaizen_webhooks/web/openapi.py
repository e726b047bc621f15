"""The OpenAPI 3.1 description of the integrators' API, served at ``<prefix>/openapi.json``."""

from __future__ import annotations

from typing import Any

from ..version import __version__
from .validation import MAX_SECRET_LENGTH, MAX_URL_LENGTH, MIN_SECRET_LENGTH

TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
ID = {"type": "string", "minLength": 1}
REV = {"type": "string", "pattern": r"^[0-9]+-[0-9a-f]+$"}


def _object(
    properties: dict[str, Any], *, required: list[str] | None = None, additional: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": additional,
    }
    schema["required"] = list(properties) if required is None else required
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _responses(ok: tuple[int, str, dict[str, Any]], *errors: int) -> dict[str, Any]:
    status, description, schema = ok
    responses: dict[str, Any] = {str(status): {"description": description, **_json(schema)}}
    for code in (401, 403, *errors):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    return responses


ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, a body that is not an object, or an invalid cursor.",
    401: "The host did not recognise the caller.",
    403: "The caller lacks 'Allow user to manage web hooks', or the host is not configured.",
    404: "No such resource for this caller.",
    405: "The endpoint does not take this method.",
    409: (
        "A stale or missing rev, a duplicate registration, a delivery being sent, or one whose "
        "registration is disabled or deleted."
    ),
    413: "The body is larger than the configured limit.",
    415: "The body is not sent as application/json.",
    422: "A field is missing, unknown or invalid.",
    429: "Too many calls of this kind this minute; ``Retry-After`` says when to try again.",
}

REGISTRATION_ID = {"name": "registration_id", "in": "path", "required": True, "schema": ID}
DELIVERY_ID = {"name": "delivery_id", "in": "path", "required": True, "schema": ID}
IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}


def build_openapi(prefix: str, topics: list[str], max_page_size: int) -> dict[str, Any]:
    """The OpenAPI document of the API mounted at ``prefix``."""
    page_parameters = [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": max_page_size},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "The next_cursor of the previous page (signed; opaque).",
        },
    ]
    topic = {"type": "string", "enum": topics}
    url = {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH}
    secret = {"type": "string", "minLength": MIN_SECRET_LENGTH, "maxLength": MAX_SECRET_LENGTH}
    schemas: dict[str, Any] = {
        "Error": _object(
            {
                "error": _object(
                    {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": ["string", "null"]},
                    },
                    additional=True,
                )
            }
        ),
        "IdRev": _object({"id": ID, "rev": REV}),
        "RegistrationCreate": _object({"topic": topic, "url": url, "secret": secret}),
        "RegistrationUpdate": _object(
            {
                "topic": topic,
                "url": url,
                "secret": secret,
                "rev": REV,
                "state": {"type": "string", "enum": ["active", "disabled"]},
            },
            required=["topic", "url"],
        ),
        "Registration": _object(
            {
                "id": ID,
                "rev": REV,
                "topic": {"type": "string"},
                "url": {"type": "string"},
                "state": {"type": "string", "enum": ["active", "disabled"]},
                "disabled_reason": {"type": ["string", "null"]},
                "secret_version": {"type": "integer", "minimum": 1},
                "previous_secret_valid_until": NULLABLE_TIME,
                "created_at": TIME,
                "updated_at": TIME,
            }
        ),
        "Rotation": _object(
            {
                "secret": secret,
                "rev": REV,
                "overlap_seconds": {"type": "number", "minimum": 0, "maximum": 30 * 86400},
            },
            required=[],
        ),
        "Rotated": _object(
            {
                "id": ID,
                "rev": REV,
                "secret_version": {"type": "integer", "minimum": 1},
                "previous_secret_valid_until": NULLABLE_TIME,
                "secret": {"type": "string"},
            },
            required=["id", "rev", "secret_version", "previous_secret_valid_until"],
        ),
        "RegistrationList": _object(
            {
                "items": {"type": "array", "items": _ref("Registration")},
                "next_cursor": {"type": ["string", "null"]},
            }
        ),
        "Delivery": _object(
            {
                "id": ID,
                "registration_id": ID,
                "topic": {"type": "string"},
                "mode": {"type": "string", "enum": ["sync", "async", "test"]},
                "status": {"type": "string", "enum": ["pending", "succeeded", "failed"]},
                "attempts": {"type": "integer", "minimum": 0},
                "last_status_code": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]},
                "response_excerpt": {"type": ["string", "null"]},
                "created_at": TIME,
                "updated_at": TIME,
                "completed_at": NULLABLE_TIME,
                "next_attempt_at": NULLABLE_TIME,
            }
        ),
        "DeliveryList": _object(
            {
                "items": {"type": "array", "items": _ref("Delivery")},
                "next_cursor": {"type": ["string", "null"]},
            }
        ),
        "Attempt": _object(
            {
                "number": {"type": "integer", "minimum": 1},
                "started_at": TIME,
                "elapsed_ms": {"type": "number"},
                "status_code": {"type": ["integer", "null"]},
                "error": {"type": ["string", "null"]},
                "response_excerpt": {"type": ["string", "null"]},
            }
        ),
        "DeliveryResult": _object(
            {
                "delivery_id": ID,
                "registration_id": ID,
                "ok": {"type": "boolean"},
                "status_code": {"type": ["integer", "null"]},
                "elapsed_ms": {"type": "number"},
                "response": {},
                "error": {"type": ["string", "null"]},
                "timed_out": {"type": "boolean"},
            }
        ),
        "Topic": _object(
            {
                "name": {"type": "string"},
                "mode": {"type": "string", "enum": ["sync", "async"]},
                "description": {"type": "string"},
                "sample_payload": {"type": "object"},
            }
        ),
        "TestRequest": _object({"topic": topic, "registration_id": ID}, required=["topic"]),
    }
    schemas["DeliveryDetail"] = {
        "allOf": [
            {**schemas["Delivery"], "additionalProperties": True},
            _object(
                {
                    "payload": {"type": "object"},
                    "attempts_log": {"type": "array", "items": _ref("Attempt")},
                },
                additional=True,
            ),
        ]
    }
    body = {"required": True}
    paths: dict[str, Any] = {
        "/registrations": {
            "get": {
                "operationId": "listRegistrations",
                "summary": "The caller's registrations",
                "parameters": [
                    {
                        "name": "topic",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    *page_parameters,
                ],
                "responses": _responses(
                    (200, "A page of registrations", _ref("RegistrationList")), 400, 422
                ),
            },
            "post": {
                "operationId": "createRegistration",
                "summary": "Register a URL for a topic",
                "requestBody": {**body, **_json(_ref("RegistrationCreate"))},
                "responses": _responses(
                    (201, "Created; Location names it", _ref("IdRev")), 400, 409, 413, 415, 422
                ),
            },
        },
        "/registrations/{registration_id}": {
            "parameters": [REGISTRATION_ID],
            "get": {
                "operationId": "getRegistration",
                "summary": "One registration (no secret)",
                "responses": _responses((200, "The registration", _ref("Registration")), 404),
            },
            "put": {
                "operationId": "updateRegistration",
                "summary": "Replace it, with the current rev",
                "parameters": [IF_MATCH],
                "requestBody": {**body, **_json(_ref("RegistrationUpdate"))},
                "responses": _responses(
                    (200, "Saved; the new rev", _ref("IdRev")), 400, 404, 409, 413, 415, 422
                ),
            },
            "delete": {
                "operationId": "deleteRegistration",
                "summary": "Delete it, with the current rev",
                "parameters": [
                    IF_MATCH,
                    {"name": "rev", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": _responses(
                    (200, "Deleted", _object({"id": ID, "rev": REV, "deleted": {"const": True}})),
                    404,
                    409,
                    422,
                ),
            },
        },
        "/registrations/{registration_id}/rotate-secret": {
            "parameters": [REGISTRATION_ID],
            "post": {
                "operationId": "rotateSecret",
                "summary": "Replace the secret; the previous one signs on for the overlap",
                "parameters": [IF_MATCH],
                "requestBody": {**body, **_json(_ref("Rotation"))},
                "responses": _responses(
                    (200, "Rotated; a generated secret is shown once", _ref("Rotated")),
                    400,
                    404,
                    409,
                    413,
                    415,
                    422,
                ),
            },
        },
        "/registrations/{registration_id}/deliveries": {
            "parameters": [REGISTRATION_ID],
            "get": {
                "operationId": "listDeliveries",
                "summary": "Its deliveries, newest first",
                "parameters": page_parameters,
                "responses": _responses(
                    (200, "A page of deliveries", _ref("DeliveryList")), 400, 404, 422
                ),
            },
        },
        "/deliveries/{delivery_id}": {
            "parameters": [DELIVERY_ID],
            "get": {
                "operationId": "getDelivery",
                "summary": "One delivery with every attempt",
                "responses": _responses((200, "The delivery", _ref("DeliveryDetail")), 404),
            },
        },
        "/deliveries/{delivery_id}/redeliver": {
            "parameters": [DELIVERY_ID],
            "post": {
                "operationId": "redeliver",
                "summary": "Queue it again now",
                "responses": _responses(
                    (202, "Queued", _object({"id": ID, "status": {"const": "pending"}})),
                    404,
                    409,
                    429,
                ),
            },
        },
        "/topics": {
            "get": {
                "operationId": "listTopics",
                "summary": "Every topic with a sample payload",
                "responses": _responses(
                    (
                        200,
                        "The topics",
                        _object({"topics": {"type": "array", "items": _ref("Topic")}}),
                    )
                ),
            },
        },
        "/test": {
            "post": {
                "operationId": "sendTest",
                "summary": "Send a topic's sample payload to the caller's registrations now",
                "requestBody": {**body, **_json(_ref("TestRequest"))},
                "responses": _responses(
                    (
                        200,
                        "What each receiver answered",
                        _object({"deliveries": {"type": "array", "items": _ref("DeliveryResult")}}),
                    ),
                    400,
                    404,
                    413,
                    415,
                    422,
                    429,
                ),
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "The OpenAPI document", **_json({"type": "object"})}
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flask-kaizen-webhooks",
            "version": __version__,
            "description": "Register webhooks, inspect their deliveries and send tests. Errors "
            'are always {"error": {"code", "message", "field"}}.',
        },
        "servers": [{"url": prefix or "/"}],
        "security": [{"host": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "host": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "However the host authenticates API "
                    "users (typically a bearer token).",
                }
            },
            "responses": {
                f"E{code}": {"description": text, **_json(_ref("Error"))}
                for code, text in ERROR_DESCRIPTIONS.items()
            },
        },
    }
