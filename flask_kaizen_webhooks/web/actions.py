"""What an integrator can do to their registrations and deliveries, whether they ask through
the JSON API or the portal: each action checks, writes and commits, or raises the
:class:`~flask_kaizen_webhooks.errors.ApiError` that says why not."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask

from ..delivery.sync import DeliveryResult
from ..errors import (
    ApiError,
    NotFound,
    PullOnlyRegistration,
    RegistrationDisabled,
    ValidationError,
)
from ..metrics import DisabledReason
from ..state import WebhooksState
from ..storage import claims, outbox, registrations
from ..storage.tables import Registration, RegistrationState
from .limits import count_call


def new_secret() -> str:
    """A secret made for the integrator, shown to them once."""
    return secrets.token_urlsafe(32)


def register(
    state: WebhooksState,
    owner: str,
    *,
    topic: str,
    url: str | None,
    secret: str,
    options: Mapping[str, Any] | None = None,
) -> Registration:
    """Add ``owner``'s registration of ``url`` (None: pull-only) for ``topic`` with its
    delivery ``options`` (all checked already)."""
    session = state.database.session
    registration = registrations.create_registration(
        session,
        owner=owner,
        topic=topic,
        url=url,
        sealed_secret=state.secrets.seal(secret),
        limit=state.settings.max_registrations_per_owner,
        options=options,
    )
    session.commit()
    return registration


def change_state(
    state: WebhooksState, owner: str, registration_id: str, *, rev: str | None, to: str
) -> Registration:
    """Enable (``"active"``) or disable (``"disabled"``) a registration at ``rev``."""
    return _change(state, owner, registration_id, rev=rev, sealed_secret=None, to=to)


@dataclass(frozen=True, slots=True)
class Rotation:
    """A rotated registration, and its new secret if it was made for the caller."""

    registration: Registration
    generated_secret: str | None


def rotate(
    state: WebhooksState,
    owner: str,
    registration_id: str,
    *,
    rev: str | None,
    secret: str | None = None,
    overlap: float | None = None,
) -> Rotation:
    """Replace the secret (with ``secret``, or one made now); the previous one keeps signing
    for ``overlap`` seconds (default: ``KAIZEN_WEBHOOKS_SECRET_OVERLAP``)."""
    new = new_secret() if secret is None else secret
    seconds = state.settings.secret_overlap if overlap is None else overlap
    registration = _change(
        state,
        owner,
        registration_id,
        rev=rev,
        sealed_secret=state.secrets.seal(new),
        overlap=timedelta(seconds=seconds),
    )
    return Rotation(registration, new if secret is None else None)


def _change(
    state: WebhooksState,
    owner: str,
    registration_id: str,
    *,
    rev: str | None,
    sealed_secret: str | None,
    to: str | None = None,
    overlap: timedelta = timedelta(0),
) -> Registration:
    """Change a registration's secret or state (``to``) at ``rev``, its topic and URL kept."""
    session = state.database.session
    current = registrations.get_registration(session, owner=owner, registration_id=registration_id)
    registration, changed = registrations.update_registration(
        session,
        owner=owner,
        registration_id=registration_id,
        rev=rev,
        topic=current.topic,
        url=current.url,
        sealed_secret=sealed_secret,
        state=to,
        overlap=overlap,
    )
    session.commit()
    note_disabled(state, changed, registration)
    return registration


def note_disabled(state: WebhooksState, changed: bool, registration: Registration) -> None:
    """Count ``registration`` as disabled by its owner if its state just ``changed`` to it."""
    if changed and registration.state == RegistrationState.DISABLED:
        state.context.metrics.disabled(DisabledReason.OWNER)


def delete(
    state: WebhooksState, owner: str, registration_id: str, *, rev: str | None
) -> Registration:
    """Delete a registration at ``rev``; its pending deliveries end."""
    session = state.database.session
    deleted = registrations.delete_registration(
        session, owner=owner, registration_id=registration_id, rev=rev
    )
    session.commit()
    return deleted


def send_test(
    state: WebhooksState, app: Flask, owner: str, topic: str, registration_id: str | None = None
) -> list[DeliveryResult]:
    """Send ``topic``'s sample payload to ``owner``'s active registrations of it (the one named,
    if given) now, and answer what each receiver answered; a pull-only registration's test is
    stored for its feed. ``topic`` is known already."""
    found = state.topics.get(topic)
    assert found is not None
    targets = outbox.active_targets(
        state.database.session, topic=topic, owner=owner, registration_id=registration_id
    )
    state.database.session.rollback()  # end the read before the (slow) sending
    if not targets:
        raise ApiError(
            404,
            "no_registration",
            f"You have no active registration for {topic!r} to test"
            + (" with that id." if registration_id else "."),
            field="registration_id" if registration_id else "topic",
        )
    most = state.settings.test_max_targets
    if len(targets) > most:
        raise ValidationError(
            "too_many_targets",
            f"You have {len(targets)} active registrations for {topic!r}; a test goes to "
            f"{most} at most: name one with 'registration_id'.",
            field="registration_id",
            limit=most,
        )
    count_call(
        state.database,
        state.clock,
        kind="test",
        owner=owner,
        per_minute=state.settings.test_calls_per_minute,
    )
    return state.send_test(app, found, targets)


def redeliver(state: WebhooksState, owner: str, delivery_id: str) -> None:
    """Queue ``owner``'s delivery again now, with the same id, and wake the engine."""
    count_call(
        state.database,
        state.clock,
        kind="redeliver",
        owner=owner,
        per_minute=state.settings.redeliver_calls_per_minute,
    )
    session = state.database.session
    claims.redeliver(session, owner=owner, delivery_id=delivery_id, now=state.clock.now())
    session.commit()
    state.executor.submit([delivery_id])


def recover(
    state: WebhooksState,
    owner: str | None,
    registration_id: str,
    *,
    since: datetime,
    until: datetime,
    statuses: Sequence[str],
) -> int:
    """Queue again, with their ids, the registration's deliveries of ``statuses`` created in
    ``[since, until)`` (an integrator's: ``owner``'s; an operator's: anyone's), and wake the
    engine; how many were queued. The registration must be active, and not pull-only."""
    session = state.database.session
    if owner is not None:
        registration = registrations.get_registration(
            session, owner=owner, registration_id=registration_id
        )
        count_call(
            state.database,
            state.clock,
            kind="recover",
            owner=owner,
            per_minute=state.settings.redeliver_calls_per_minute,
        )
    else:
        found = session.get(Registration, registration_id)
        if found is None:
            raise NotFound()
        registration = found
    if registration.url is None:
        session.rollback()
        raise PullOnlyRegistration()
    if registration.state != RegistrationState.ACTIVE:
        session.rollback()
        raise RegistrationDisabled()
    queued = claims.recover(
        session,
        registration_id=registration_id,
        since=since,
        until=until,
        statuses=statuses,
        now=state.clock.now(),
    )
    session.commit()
    state.executor.submit(queued)
    return len(queued)
