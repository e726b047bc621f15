"""The integrators' JSON API: registrations, deliveries, tests and topics."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from typing import Any

from flask import Response, current_app, jsonify, url_for

from ..clock import isoformat
from ..errors import ApiError, ValidationError
from ..storage import claims, outbox, reads, registrations
from ..storage.tables import DeliveryStatus, Registration
from .blueprint import Handler, blueprint, current_owner, current_state, route_operations
from .inputs import (
    decode_cursor,
    json_body,
    page,
    page_limit,
    query,
    sent_rev,
    with_etag,
)
from .limits import count_call
from .openapi import OPERATIONS, build_openapi
from .validation import (
    MAX_OVERLAP_SECONDS,
    RegistrationInput,
    parse_registration,
    parse_rotation,
    parse_test_request,
)

__all__ = ["blueprint"]


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
    session = state.database.session
    registration = registrations.create_registration(
        session,
        owner=current_owner(),
        topic=data.topic,
        url=data.url,
        sealed_secret=state.secrets.seal(data.secret),
        limit=state.settings.max_registrations_per_owner,
    )
    session.commit()
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
    registration = registrations.update_registration(
        session,
        owner=current_owner(),
        registration_id=registration_id,
        rev=sent_rev(data.rev),
        topic=data.topic,
        url=data.url,
        sealed_secret=None if data.secret is None else state.secrets.seal(data.secret),
        state=data.state,
        overlap=timedelta(seconds=state.settings.secret_overlap),
    )
    session.commit()
    return with_etag(jsonify(id=registration.id, rev=registration.rev), registration.rev)


def rotate_secret(registration_id: str) -> Response:
    """Replace the secret; the previous one keeps signing for the overlap."""
    state = current_state()
    document = json_body()
    data = parse_rotation(document, max_overlap=MAX_OVERLAP_SECONDS)
    generated = data.secret is None
    secret = secrets.token_urlsafe(32) if data.secret is None else data.secret
    overlap = state.settings.secret_overlap if data.overlap is None else data.overlap
    session = state.database.session
    current = registrations.get_registration(
        session, owner=current_owner(), registration_id=registration_id
    )
    registration = registrations.update_registration(
        session,
        owner=current_owner(),
        registration_id=registration_id,
        rev=sent_rev(data.rev),
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
    return with_etag(jsonify(body), registration.rev)


def delete_registration(registration_id: str) -> Response:
    session = current_state().database.session
    deleted: Registration = registrations.delete_registration(
        session, owner=current_owner(), registration_id=registration_id, rev=sent_rev()
    )
    session.commit()
    return jsonify(id=deleted.id, rev=deleted.rev, deleted=True)


def send_test() -> Response:
    """Send the topic's sample payload to the caller's registrations now; answer the results."""
    state = current_state()
    data = parse_test_request(json_body(), topics=state.topics)
    topic = state.topics.get(data.topic)
    assert topic is not None
    targets = outbox.active_targets(
        state.database.session,
        topic=data.topic,
        owner=current_owner(),
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
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    results = state.send_test(app, topic, targets)
    return jsonify(deliveries=[result.to_dict() for result in results])


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


def get_delivery(delivery_id: str) -> Response:
    session = current_state().database.session
    delivery = reads.get_delivery(session, owner=current_owner(), delivery_id=delivery_id)
    body = delivery.to_public_dict()
    body["payload"] = json.loads(delivery.payload)
    body["attempts_log"] = [
        attempt.to_public_dict() for attempt in reads.attempts_of(session, delivery.id)
    ]
    return jsonify(body)


def _count_call(kind: str, per_minute: int) -> None:
    """Count the caller's call of ``kind``: 429 past ``per_minute`` (see :mod:`.limits`)."""
    state = current_state()
    count_call(state.database, state.clock, kind=kind, owner=current_owner(), per_minute=per_minute)


def redeliver(delivery_id: str) -> tuple[Response, int]:
    state = current_state()
    _count_call("redeliver", state.settings.redeliver_calls_per_minute)
    session = state.database.session
    claims.redeliver(session, owner=current_owner(), delivery_id=delivery_id, now=state.clock.now())
    session.commit()
    state.executor.submit([delivery_id])
    return jsonify(id=delivery_id, status=DeliveryStatus.PENDING), 202


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
    "getDelivery": get_delivery,
    "redeliver": redeliver,
    "listTopics": list_topics,
    "sendTest": send_test,
    "openapi": openapi_document,
}

route_operations(OPERATIONS, HANDLERS)
