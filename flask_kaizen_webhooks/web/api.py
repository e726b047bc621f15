"""The integrators' JSON API: registrations, deliveries, tests and topics."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from flask import Response, current_app, jsonify, request, url_for

from ..clock import isoformat
from ..delivery.requests import signed_body
from ..errors import ApiError, WebhooksError
from ..portal.links import make_link
from ..state import WebhooksState
from ..storage import reads, registrations
from ..storage.rows import Target, target_from_row
from ..storage.tables import Delivery, DeliveryStatus
from . import actions
from .blueprint import Handler, blueprint, current_owner, current_state, route_operations
from .health import health
from .inputs import (
    decode_cursor,
    encode_cursor,
    json_body,
    page,
    page_limit,
    query,
    sent_rev,
    with_etag,
)
from .openapi import OPERATIONS, build_openapi
from .validation import (
    MAX_OVERLAP_SECONDS,
    RegistrationInput,
    parse_portal_link,
    parse_recover,
    parse_registration,
    parse_rotation,
    parse_test_request,
)

__all__ = ["blueprint"]

#: How old a delivery is before a feed shows it: a delivery made (and stamped) just before a
#: page is read may commit just after; by then it is in no page yet, never behind the cursor.
FEED_SETTLE = timedelta(seconds=2)


def _registration_input(*, for_update: bool) -> RegistrationInput:
    """The request's registration document, validated."""
    state = current_state()
    return parse_registration(
        json_body(),
        topics=state.topics,
        allow_http=state.settings.allow_http,
        policy=state.settings.address_policy,
        for_update=for_update,
    )


def create_registration() -> tuple[Response, int, dict[str, str]]:
    state = current_state()
    data = _registration_input(for_update=False)
    assert data.secret is not None
    registration = actions.register(
        state,
        current_owner(),
        topic=data.topic,
        url=data.url,
        secret=data.secret,
        options=data.options,
    )
    location = url_for(".registration", registration_id=registration.id)
    response = with_etag(jsonify(id=registration.id, rev=registration.rev), registration.rev)
    return response, 201, {"Location": location}


def list_registrations() -> Response:
    state = current_state()
    owner = current_owner()
    topic = query("topic") or None
    limit = page_limit(state)
    scope = {"kind": "registrations", "owner": owner, "topic": topic}
    after = decode_cursor(scope)
    rows = reads.list_registrations(
        state.database.session, owner=owner, topic=topic, after=after, limit=limit + 1
    )
    return page(rows, limit, scope)


def get_registration(registration_id: str) -> Response:
    registration = registrations.get_registration(
        current_state().database.session, owner=current_owner(), registration_id=registration_id
    )
    return with_etag(jsonify(registration.to_public_dict()), registration.rev)


def update_registration(registration_id: str) -> Response:
    state = current_state()
    data = _registration_input(for_update=True)
    session = state.database.session
    registration, changed = registrations.update_registration(
        session,
        owner=current_owner(),
        registration_id=registration_id,
        rev=sent_rev(data.rev),
        topic=data.topic,
        url=data.url,
        sealed_secret=None if data.secret is None else state.secrets.seal(data.secret),
        state=data.state,
        overlap=timedelta(seconds=state.settings.secret_overlap),
        options=data.options,
    )
    session.commit()
    actions.note_disabled(state, changed, registration)
    return with_etag(jsonify(id=registration.id, rev=registration.rev), registration.rev)


def rotate_secret(registration_id: str) -> Response:
    """Replace the secret; the previous one keeps signing for the overlap."""
    data = parse_rotation(json_body(), max_overlap=MAX_OVERLAP_SECONDS)
    rotated = actions.rotate(
        current_state(),
        current_owner(),
        registration_id,
        rev=sent_rev(data.rev),
        secret=data.secret,
        overlap=data.overlap,
    )
    registration = rotated.registration
    body: dict[str, Any] = {
        "id": registration.id,
        "rev": registration.rev,
        "secret_version": registration.secret_version,
        "previous_secret_valid_until": isoformat(registration.previous_secret_until),
    }
    if rotated.generated_secret is not None:
        body["secret"] = rotated.generated_secret  # shown this once: the caller asked us to
    return with_etag(jsonify(body), registration.rev)


def delete_registration(registration_id: str) -> Response:
    deleted = actions.delete(current_state(), current_owner(), registration_id, rev=sent_rev())
    return jsonify(id=deleted.id, rev=deleted.rev, deleted=True)


def send_test() -> Response:
    """Send the topic's sample payload to the caller's registrations now; answer the results."""
    state = current_state()
    data = parse_test_request(json_body(), topics=state.topics)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    results = actions.send_test(state, app, current_owner(), data.topic, data.registration_id)
    return jsonify(deliveries=[result.to_dict() for result in results])


def recover(registration_id: str) -> tuple[Response, int]:
    """Queue again the registration's failed (or all finished) deliveries of a time window."""
    state = current_state()
    data = parse_recover(
        json_body(),
        now=state.clock.now(),
        kept=timedelta(days=state.settings.retention_days),
    )
    queued = actions.recover(
        state,
        current_owner(),
        registration_id,
        since=data.since,
        until=data.until,
        statuses=data.statuses,
    )
    return jsonify(queued=queued, since=isoformat(data.since), until=isoformat(data.until)), 202


def list_deliveries(registration_id: str) -> Response:
    state = current_state()
    owner = current_owner()
    session = state.database.session
    registrations.get_registration(session, owner=owner, registration_id=registration_id)
    limit = page_limit(state)
    scope = {"kind": "deliveries", "owner": owner, "registration": registration_id}
    before = decode_cursor(scope)
    rows = reads.list_deliveries(
        session, owner=owner, registration_id=registration_id, before=before, limit=limit + 1
    )
    return page(rows, limit, scope)


def read_feed(registration_id: str) -> Response:
    """The registration's deliveries in the order they were made, each as the signed body it
    is pushed with (a pull-only registration's, as it would be), from the ``after`` cursor
    on."""
    state = current_state()
    owner = current_owner()
    session = state.database.session
    registration = registrations.get_registration(
        session, owner=owner, registration_id=registration_id
    )
    limit = page_limit(state)
    scope = {"kind": "feed", "owner": owner, "registration": registration_id}
    after = decode_cursor(scope, "after")
    rows = reads.feed(
        session,
        owner=owner,
        registration_id=registration_id,
        after=after,
        until=state.clock.now() - FEED_SETTLE,
        limit=limit + 1,
    )
    target = target_from_row(
        registration.id,
        registration.owner,
        registration.url,
        registration.secret,
        registration.secret_version,
        registration.previous_secret,
        registration.previous_secret_until,
    )
    items = [_feed_item(state, target, row) for row in rows[:limit]]
    next_cursor = encode_cursor(scope, rows[:limit][-1]) if items else query("after") or None
    return jsonify(items=items, next_cursor=next_cursor, has_more=len(rows) > limit)


def _feed_item(state: WebhooksState, target: Target, row: Delivery) -> dict[str, Any]:
    """One delivery of a feed: what identifies it, and its body as it is pushed (signed now)."""
    headers: dict[str, str] = {}
    signed = signed_body(
        state.context,
        target=target,
        payload=row.payload.encode(),
        headers=headers,
        delivery_id=row.id,
    )
    if not isinstance(signed, bytes):
        raise WebhooksError(f"Delivery {row.id} could not be signed: {signed.error}")
    return {
        "id": row.id,
        "topic": row.topic,
        "status": row.status,
        "created_at": isoformat(row.created_at),
        "body": signed.decode("ascii"),
        "signature_next": headers.get("Webhook-Signature-Next"),
    }


def get_delivery(delivery_id: str) -> Response:
    session = current_state().database.session
    delivery = reads.get_delivery(session, owner=current_owner(), delivery_id=delivery_id)
    body = delivery.to_public_dict()
    body["payload"] = json.loads(delivery.payload)
    body["attempts_log"] = [
        attempt.to_public_dict() for attempt in reads.attempts_of(session, delivery.id)
    ]
    return jsonify(body)


def redeliver(delivery_id: str) -> tuple[Response, int]:
    actions.redeliver(current_state(), current_owner(), delivery_id)
    return jsonify(id=delivery_id, status=DeliveryStatus.PENDING), 202


def create_portal_link() -> tuple[Response, int]:
    """A link opening the portal for the caller, for ``expires_in`` seconds (default: an hour);
    the body may be left out."""
    state = current_state()
    if not state.settings.portal:
        raise ApiError(404, "not_found", "The portal is turned off on this host.")
    expires_in = parse_portal_link(json_body() if request.content_length else {})
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    link = make_link(app, current_owner(), expires_in=expires_in)
    return jsonify(link.to_dict()), 201


def list_topics() -> Response:
    return jsonify(topics=[topic.to_dict() for topic in current_state().topics])


def openapi_document() -> Response:
    state = current_state()
    return jsonify(
        build_openapi(
            state.settings.url_prefix,
            state.topics.names(),
            state.settings.max_page_size,
        )
    )


#: The handler of each operation of the API, by its ``operationId``: the routes, their methods
#: and their description are declared once, in :data:`.openapi.OPERATIONS`.
HANDLERS: dict[str, Handler] = {
    "listRegistrations": list_registrations,
    "createRegistration": create_registration,
    "getRegistration": get_registration,
    "updateRegistration": update_registration,
    "deleteRegistration": delete_registration,
    "rotateSecret": rotate_secret,
    "listDeliveries": list_deliveries,
    "recover": recover,
    "getDelivery": get_delivery,
    "readFeed": read_feed,
    "redeliver": redeliver,
    "listTopics": list_topics,
    "sendTest": send_test,
    "createPortalLink": create_portal_link,
    "openapi": openapi_document,
    "health": health,
}

route_operations(OPERATIONS, HANDLERS)
