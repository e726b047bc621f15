"""The components of the OpenAPI document, declared as data: its schemas and its shared error
answers. The values only the application knows (its topics, its largest page) are :class:`Slot`
placeholders, filled in when the document is built (see :mod:`.openapi`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..storage.tables import DeliveryStatus
from .validation import (
    MAX_PER_SECOND,
    MAX_SECRET_LENGTH,
    MAX_URL_LENGTH,
    MIN_SECRET_LENGTH,
    ORDERINGS,
)

#: A JSON Schema, or any other piece of the document.
Schema = dict[str, Any]


@dataclass(frozen=True)
class Slot:
    """A value of the application's, put in its place when the document is built."""

    name: str


#: The names of the application's topics.
TOPIC_NAMES = Slot("topics")
#: The largest page a list endpoint returns.
MAX_PAGE_SIZE = Slot("max_page_size")


def object_schema(
    properties: Schema, *, required: list[str] | None = None, additional: bool = False
) -> Schema:
    """An object with these properties: all of them required unless ``required`` says."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "additionalProperties": additional,
    }
    schema["required"] = list(properties) if required is None else required
    return schema


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


# Component schemas -------------------------------------------------------------------------------

TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
NULLABLE_TEXT = {"type": ["string", "null"]}
NULLABLE_INTEGER = {"type": ["integer", "null"]}
ID = {"type": "string", "minLength": 1}
REV = {"type": "string", "pattern": r"^[0-9]+-[0-9a-f]+$"}
TOPIC = {"type": "string", "enum": TOPIC_NAMES}
#: A registration's URL; null for a pull-only registration, read through its feed.
URL = {"type": ["string", "null"], "format": "uri", "maxLength": MAX_URL_LENGTH}
SECRET = {"type": "string", "minLength": MIN_SECRET_LENGTH, "maxLength": MAX_SECRET_LENGTH}
STATE = {"type": "string", "enum": ["active", "disabled"]}
SECRET_VERSION = {"type": "integer", "minimum": 1}
#: A registration's delivery options.
OPTIONS: dict[str, Schema] = {
    "ordering": {"type": "string", "enum": list(ORDERINGS)},
    "max_per_second": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": MAX_PER_SECOND,
    },
}

DELIVERY_STATUSES = [status.value for status in DeliveryStatus]

DELIVERY = object_schema(
    {
        "id": ID,
        "registration_id": ID,
        "topic": {"type": "string"},
        "mode": {"type": "string", "enum": ["sync", "async", "test"]},
        "status": {"type": "string", "enum": DELIVERY_STATUSES},
        "attempts": {"type": "integer", "minimum": 0},
        "last_status_code": NULLABLE_INTEGER,
        "last_error": NULLABLE_TEXT,
        "response_excerpt": NULLABLE_TEXT,
        "created_at": TIME,
        "updated_at": TIME,
        "completed_at": NULLABLE_TIME,
        "next_attempt_at": NULLABLE_TIME,
    }
)

SCHEMAS: dict[str, Schema] = {
    "Error": object_schema(
        {
            "error": object_schema(
                {"code": {"type": "string"}, "message": {"type": "string"}, "field": NULLABLE_TEXT},
                additional=True,
            )
        }
    ),
    "IdRev": object_schema({"id": ID, "rev": REV}),
    "RegistrationCreate": object_schema(
        {"topic": TOPIC, "url": URL, "secret": SECRET, **OPTIONS},
        required=["topic", "url", "secret"],
    ),
    "RegistrationUpdate": object_schema(
        {"topic": TOPIC, "url": URL, "secret": SECRET, "rev": REV, "state": STATE, **OPTIONS},
        required=["topic", "url"],
    ),
    "Registration": object_schema(
        {
            "id": ID,
            "rev": REV,
            "topic": {"type": "string"},
            "url": {"type": ["string", "null"]},
            "state": STATE,
            "disabled_reason": NULLABLE_TEXT,
            **OPTIONS,
            "secret_version": SECRET_VERSION,
            "previous_secret_valid_until": NULLABLE_TIME,
            "created_at": TIME,
            "updated_at": TIME,
        }
    ),
    "Rotation": object_schema(
        {
            "secret": SECRET,
            "rev": REV,
            "overlap_seconds": {"type": "number", "minimum": 0, "maximum": 30 * 86400},
        },
        required=[],
    ),
    "Rotated": object_schema(
        {
            "id": ID,
            "rev": REV,
            "secret_version": SECRET_VERSION,
            "previous_secret_valid_until": NULLABLE_TIME,
            "secret": {"type": "string"},
        },
        required=["id", "rev", "secret_version", "previous_secret_valid_until"],
    ),
    "RegistrationList": object_schema(
        {"items": {"type": "array", "items": ref("Registration")}, "next_cursor": NULLABLE_TEXT}
    ),
    "Delivery": DELIVERY,
    "DeliveryList": object_schema(
        {"items": {"type": "array", "items": ref("Delivery")}, "next_cursor": NULLABLE_TEXT}
    ),
    "Attempt": object_schema(
        {
            "number": {"type": "integer", "minimum": 1},
            "started_at": TIME,
            "elapsed_ms": {"type": "number"},
            "status_code": NULLABLE_INTEGER,
            "error": NULLABLE_TEXT,
            "response_excerpt": NULLABLE_TEXT,
        }
    ),
    "DeliveryResult": object_schema(
        {
            "delivery_id": ID,
            "registration_id": ID,
            "ok": {"type": "boolean"},
            "status_code": NULLABLE_INTEGER,
            "elapsed_ms": {"type": "number"},
            "response": {},
            "error": NULLABLE_TEXT,
            "timed_out": {"type": "boolean"},
            "stored": {"type": "boolean"},
        }
    ),
    "Topic": object_schema(
        {
            "name": {"type": "string"},
            "mode": {"type": "string", "enum": ["sync", "async"]},
            "description": {"type": "string"},
            "sample_payload": {"type": "object"},
        }
    ),
    "Feed": object_schema(
        {
            "items": {
                "type": "array",
                "items": object_schema(
                    {
                        "id": ID,
                        "topic": {"type": "string"},
                        "status": {"type": "string", "enum": DELIVERY_STATUSES},
                        "created_at": TIME,
                        "body": {"type": "string"},
                        "signature_next": NULLABLE_TEXT,
                    }
                ),
            },
            "next_cursor": NULLABLE_TEXT,
            "has_more": {"type": "boolean"},
        }
    ),
    "Recovery": object_schema(
        {"since": TIME, "until": TIME, "status": {"type": "string", "enum": ["failed", "all"]}},
        required=["since"],
    ),
    "Recovered": object_schema(
        {"queued": {"type": "integer", "minimum": 0}, "since": TIME, "until": TIME}
    ),
    "PortalLinkRequest": object_schema(
        {"expires_in": {"type": "number", "minimum": 1, "maximum": 7 * 86400}}, required=[]
    ),
    "PortalLink": object_schema({"url": {"type": "string"}, "expires_at": TIME}),
    "Health": object_schema(
        {
            "status": {"type": "string", "enum": ["ok", "unhealthy"]},
            "problems": {
                "type": "array",
                "items": {
                    "type": "string",
                    "enum": ["behind", "engine_stopped", "engine_died", "database_unreachable"],
                },
            },
            "oldest_due_seconds": {"type": "number", "minimum": 0},
            "max_delay_seconds": {"type": "number"},
            "engine": {"type": "string", "enum": ["running", "stopped", "died", "elsewhere"]},
        }
    ),
    "TestRequest": object_schema({"topic": TOPIC, "registration_id": ID}, required=["topic"]),
    "DeliveryDetail": {
        "allOf": [
            {**DELIVERY, "additionalProperties": True},
            object_schema(
                {
                    "payload": {"type": "object"},
                    "attempts_log": {"type": "array", "items": ref("Attempt")},
                },
                additional=True,
            ),
        ]
    },
}

#: The shared error answers, by status; operations name them by status.
ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, a body that is not an object, or an invalid cursor.",
    401: "The host did not recognise the caller.",
    403: "The caller lacks 'Allow user to manage web hooks', or the host is not configured.",
    404: "No such resource for this caller.",
    405: "The endpoint does not take this method.",
    409: (
        "A stale or missing rev, a duplicate registration, a delivery being sent, or one whose "
        "registration is disabled, deleted or pull-only (nothing of it is sent)."
    ),
    413: "The body is larger than the configured limit.",
    415: "The body is not sent as application/json.",
    422: "A field is missing, unknown or invalid.",
    429: "Too many calls of this kind this minute; ``Retry-After`` says when to try again.",
}
