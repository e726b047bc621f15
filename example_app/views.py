"""The host's own endpoints: SSO login, profiles and bookings. Each change sends its webhook
through the extension's signals, inside the transaction that makes it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select

from flask_kaizen_webhooks import ApiError, ValidationError, signals

from .extensions import db
from .models import ApiUser, Booking, Profile, next_rev
from .workflow import TRANSITIONS

host = Blueprint("host", __name__)

PROFILE_FIELDS = {"firstName": "first_name", "lastName": "last_name", "email": "email"}
BOOKING_FIELDS = {"title": "title", "userId": "user_id", "start": "start", "end": "end"}


def api_user() -> ApiUser | None:
    """The API user named by the request's bearer token, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    user: ApiUser | None = db.session.scalar(select(ApiUser).where(ApiUser.token == token))
    return user


def require_user(*, admin: bool) -> ApiUser:
    user = api_user()
    if user is None:
        raise ApiError(
            401,
            "unauthenticated",
            "Authentication is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if admin and not user.is_admin:
        raise ApiError(403, "forbidden", "This user may not edit profiles and bookings.")
    return user


def json_object(allowed: set[str]) -> dict[str, Any]:
    """The request's JSON object, with only ``allowed`` fields."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send JSON as application/json.")
    try:
        document = json.loads(request.get_data(cache=False) or b"")
    except ValueError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_body", "The body must be a JSON object.")
    for name in document:
        if name not in allowed:
            raise ValidationError(
                "unknown_field",
                f"Unknown field {name!r}; allowed are: {', '.join(sorted(allowed))}.",
                field=name,
            )
    return document


def string_or_none(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is not None and not isinstance(value, str):
        raise ValidationError("invalid_type", f"{name!r} must be a string.", field=name)
    return value


def check_rev(document: dict[str, Any], current: str) -> None:
    sent = document.get("rev")
    if sent is not None and sent != current:
        raise ApiError(
            409,
            "rev_conflict",
            f"Rev {sent} is stale; the current rev is {current}.",
            field="rev",
            current_rev=current,
        )


def app_object() -> Any:
    return current_app._get_current_object()  # type: ignore[attr-defined]


# SSO login -------------------------------------------------------------------------------------


@host.post("/sso/login")
def sso_login() -> Response:
    """Log a user in from the SSO proxy's ``X-SSO-*`` headers, creating them on first login."""
    sso = {
        name[len("X-SSO-") :].lower().replace("-", "_"): value
        for name, value in request.headers.items()
        if name.lower().startswith("x-sso-")
    }
    email = sso.get("email")
    if not email:
        raise ValidationError(
            "missing_sso_email", "The X-SSO-Email header is required.", field="X-SSO-Email"
        )
    profile = db.session.scalar(select(Profile).where(Profile.email == email))
    hooks: dict[str, list[dict[str, Any]]] = {}
    if profile is None:
        profile = Profile(
            email=email,
            first_name=sso.get("first_name", ""),
            last_name=sso.get("last_name", ""),
            sso=sso,
            user_fields=[],
            audit_log=[],
        )
        profile.rev = next_rev(None, {"email": email})
        db.session.add(profile)
        db.session.commit()  # committed first, so an integration can call back to fill it in
        [(_, registered)] = signals.user_registered.send(
            app_object(), payload={"user_id": profile.id, "sso": sso}
        )
        hooks["user_registered"] = [result.to_dict() for result in registered]
    [(_, logged_in)] = signals.user_logged_in.send(
        app_object(), payload={"user_id": profile.id, "sso": sso}
    )
    hooks["user_logged_in"] = [result.to_dict() for result in logged_in]
    db.session.refresh(profile)  # the hooks may have changed it through the API
    return jsonify(user=profile.to_document(), hooks=hooks)


# Profiles --------------------------------------------------------------------------------------


def find_profile(profile_id: str) -> Profile:
    profile = db.session.get(Profile, profile_id)
    if profile is None:
        raise ApiError(404, "not_found", "No such profile.")
    return profile


@host.get("/v2/profiles/<profile_id>")
def get_profile(profile_id: str) -> Response:
    require_user(admin=False)
    return jsonify(find_profile(profile_id).to_document())


@host.put("/v2/profiles/<profile_id>")
def put_profile(profile_id: str) -> Response:
    """Save profile fields; sends ``profile_updated`` with the full new profile."""
    user = require_user(admin=True)
    document = json_object({*PROFILE_FIELDS, "userFields", "rev"})
    profile = find_profile(profile_id)
    check_rev(document, profile.rev)
    changed = []
    for field, attribute in PROFILE_FIELDS.items():
        if field in document:
            value = string_or_none(document, field)
            if not value and field == "email":
                raise ValidationError("invalid_value", "'email' cannot be empty.", field=field)
            setattr(profile, attribute, value or "")
            changed.append(field)
    if "userFields" in document:
        if not isinstance(document["userFields"], list):
            raise ValidationError(
                "invalid_type", "'userFields' must be a list.", field="userFields"
            )
        profile.user_fields = document["userFields"]
        changed.append("userFields")
    profile.audit_log = [*profile.audit_log, {"at": _now(), "by": user.id, "changed": changed}]
    profile.rev = next_rev(profile.rev, profile.to_document())
    signals.profile_updated.send(app_object(), payload=profile.to_document())
    db.session.commit()
    return jsonify(profile.to_document())


# Bookings --------------------------------------------------------------------------------------


def find_booking(booking_id: str) -> Booking:
    booking = db.session.get(Booking, booking_id)
    if booking is None:
        raise ApiError(404, "not_found", "No such booking.")
    return booking


@host.get("/v2/bookings/<booking_id>")
def get_booking(booking_id: str) -> Response:
    require_user(admin=False)
    return jsonify(find_booking(booking_id).to_document())


@host.put("/v2/bookings/<booking_id>")
def put_booking(booking_id: str) -> tuple[Response, int]:
    """Create or save a booking; sends ``booking_updated`` on every save, changed or not."""
    require_user(admin=True)
    document = json_object({*BOOKING_FIELDS, "rev"})
    booking = db.session.get(Booking, booking_id)
    created = booking is None
    if booking is None:
        booking = Booking(id=booking_id, state="requested", comments=[], rev="")
        db.session.add(booking)
    else:
        check_rev(document, booking.rev)
    for field, attribute in BOOKING_FIELDS.items():
        if field in document:
            setattr(booking, attribute, string_or_none(document, field))
    booking.rev = next_rev(booking.rev or None, booking.to_document())
    signals.booking_updated.send(app_object(), payload=booking.to_document())
    db.session.commit()
    return jsonify(booking.to_document()), 201 if created else 200


@host.post("/v2/bookings/<booking_id>/transitions")
def run_transition(booking_id: str) -> Response:
    """Run a workflow transition; sends ``booking_state_changed``, even if the state stays."""
    require_user(admin=True)
    document = json_object({"transition", "comment"})
    name = string_or_none(document, "transition")
    if name is None:
        raise ValidationError("missing_field", "'transition' is required.", field="transition")
    transition = TRANSITIONS.get(name)
    if transition is None:
        raise ValidationError(
            "unknown_transition",
            f"Unknown transition {name!r}; valid are: {', '.join(TRANSITIONS)}.",
            field="transition",
            valid_transitions=list(TRANSITIONS),
        )
    booking = find_booking(booking_id)
    source = booking.state
    if source not in transition.sources:
        raise ApiError(
            409,
            "transition_not_allowed",
            f"{name!r} cannot run from the state {source!r}.",
            field="transition",
        )
    if transition.target is not None:
        booking.state = transition.target
    comment = string_or_none(document, "comment")
    if comment:
        booking.comments = [*booking.comments, {"at": _now(), "text": comment}]
    booking.rev = next_rev(booking.rev, booking.to_document())
    payload = {
        "booking": booking.to_document(),
        "transition": {"name": name, "from": source, "to": booking.state},
        "actions": list(transition.actions),
    }
    signals.booking_state_changed.send(app_object(), payload=payload)
    db.session.commit()
    return jsonify(payload)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
