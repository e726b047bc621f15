"""Registrations: their writes with revs, the duplicate guard, secrets and enabling or
disabling one."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..clock import utcnow
from ..errors import DuplicateRegistration, NotFound, RegistrationLimitReached, RevConflict
from . import fifo
from .rows import ended_unsent, not_claimed
from .tables import (
    Delivery,
    DeliveryStatus,
    Ordering,
    Registration,
    RegistrationState,
    url_digest,
)

#: The values that end a registration's run of failed deliveries.
FAILURES_CLEARED: dict[str, Any] = {"consecutive_failures": 0, "failing_since": None}


def next_revision(
    current: Registration | None, *, topic: str, url: str | None, state: str
) -> dict[str, Any]:
    """The ``rev`` and ``rev_number`` of a registration's next revision (its first when
    ``current`` is None) with this topic, URL and state.

    A rev is CouchDB-style, ``"N-<hex digest>"``, N counting the revisions. The digest covers
    the previous rev, the public content and a random salt, so two writes never produce the
    same rev and the secret never influences it.
    """
    number = 1 if current is None else current.rev_number + 1
    previous = None if current is None else current.rev
    material = json.dumps([number, previous, topic, url, state, secrets.token_hex(8)])
    rev = f"{number}-{hashlib.sha256(material.encode()).hexdigest()[:32]}"
    return {"rev": rev, "rev_number": number}


def _apply(registration: Registration, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(registration, name, value)


def create_registration(
    session: Session,
    *,
    owner: str,
    topic: str,
    url: str | None,
    sealed_secret: str,
    limit: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Registration:
    """Add a registration (pull-only when ``url`` is None) with its delivery ``options``
    (``ordering``, ``max_per_second``); raise :class:`DuplicateRegistration` if the owner has
    it already."""
    _refuse_duplicate(session, owner=owner, topic=topic, url=url, except_id=None)
    if limit is not None:
        count = session.scalar(
            select(func.count()).select_from(Registration).where(Registration.owner == owner)
        )
        if (count or 0) >= limit:
            raise RegistrationLimitReached(count or 0, limit)
    now = utcnow()
    registration = Registration(
        id=str(uuid.uuid4()),
        owner=owner,
        topic=topic,
        url=url,
        url_digest=url_digest(url),
        secret=sealed_secret,
        state=RegistrationState.ACTIVE,
        created_at=now,
        updated_at=now,
        **next_revision(None, topic=topic, url=url, state=RegistrationState.ACTIVE),
        **{"ordering": Ordering.NONE, **(options or {})},
    )
    session.add(registration)
    with _duplicate_guard(session, owner=owner, topic=topic, url=url, except_id=None):
        session.flush()
    return registration


def get_registration(session: Session, *, owner: str, registration_id: str) -> Registration:
    """The owner's registration; another owner's is as missing as one that never existed."""
    registration = session.scalars(
        select(Registration).where(Registration.id == registration_id, Registration.owner == owner)
    ).one_or_none()
    if registration is None:
        raise NotFound()
    return registration


def update_registration(
    session: Session,
    *,
    owner: str,
    registration_id: str,
    rev: str | None,
    topic: str,
    url: str | None,
    sealed_secret: str | None,
    state: str | None = None,
    overlap: timedelta = timedelta(0),
    options: Mapping[str, Any] | None = None,
) -> tuple[Registration, bool]:
    """Replace topic, url and (when given) secret, state and delivery ``options``, if ``rev``
    is still current; the registration, and whether that changed its state.

    Enabling a registration clears its record of failures. Made pull-only (``url`` None), its
    deliveries waiting to be sent are stored for its feed instead.
    """
    current = get_registration(session, owner=owner, registration_id=registration_id)
    if rev != current.rev:
        raise RevConflict(current.rev, rev)
    _refuse_duplicate(session, owner=owner, topic=topic, url=url, except_id=current.id)
    was = current.state
    new_state = state or was
    values: dict[str, Any] = {
        "topic": topic,
        "url": url,
        "url_digest": url_digest(url),
        "updated_at": utcnow(),
        **next_revision(current, topic=topic, url=url, state=new_state),
        **(options or {}),
    }
    if sealed_secret is not None:
        values.update(_rotation(current, sealed_secret, overlap))
    if new_state != was:
        values.update(_state_change(new_state, reason="disabled by its owner"))
    # The rev condition makes the check and the write one atomic step under concurrent updates.
    with _duplicate_guard(session, owner=owner, topic=topic, url=url, except_id=current.id):
        result = session.execute(
            update(Registration)
            .where(Registration.id == current.id, Registration.rev == rev)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise RevConflict(_current_rev(session, current.id), rev)
    if url is None and current.url is not None:
        _store_unclaimed_deliveries(session, current.id)
    _ordering_changed(session, current.id, current.ordering, values.get("ordering"))
    session.refresh(current)
    return current, new_state != was


def _ordering_changed(
    session: Session, registration_id: str, before: str, after: str | None
) -> None:
    """A registration that is FIFO no more lets go of the deliveries waiting their turn."""
    if before == Ordering.FIFO and after not in (None, Ordering.FIFO):
        fifo.let_go(session.connection(), registration_id=registration_id, now=utcnow())


def _rotation(current: Registration, sealed_secret: str, overlap: timedelta) -> dict[str, Any]:
    """The values that replace a registration's secret, the old one signing for ``overlap``."""
    values: dict[str, Any] = {
        "secret": sealed_secret,
        "secret_version": current.secret_version + 1,
        "previous_secret": None,
        "previous_secret_until": None,
    }
    if overlap > timedelta(0):
        values.update(previous_secret=current.secret, previous_secret_until=utcnow() + overlap)
    return values


def delete_registration(
    session: Session, *, owner: str, registration_id: str, rev: str | None
) -> Registration:
    """Delete the owner's registration if ``rev`` is still current; return what was deleted."""
    current = get_registration(session, owner=owner, registration_id=registration_id)
    if rev != current.rev:
        raise RevConflict(current.rev, rev)
    result = session.execute(
        delete(Registration)
        .where(Registration.id == current.id, Registration.rev == rev)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise RevConflict(_current_rev(session, current.id), rev)
    session.expunge(current)
    _end_unclaimed_deliveries(session, current.id, error="the registration was deleted")
    return current


def _end_unclaimed_deliveries(session: Session, registration_id: str, *, error: str) -> None:
    """Fail the registration's pending deliveries that no worker holds; a claimed one is left
    to its worker, which ends it when it finds the registration gone."""
    now = utcnow()
    _change_unclaimed(session, registration_id, now, ended_unsent(error, now))


def _store_unclaimed_deliveries(session: Session, registration_id: str) -> None:
    """Keep the pending deliveries of a registration made pull-only that no worker holds for
    its feed, unsent; a claimed one is attempted by its worker, and stored when claimed next
    if it must be retried."""
    now = utcnow()
    stored = {"status": DeliveryStatus.STORED, "claim_token": None, "next_attempt_at": None}
    _change_unclaimed(
        session, registration_id, now, {**stored, "completed_at": now, "updated_at": now}
    )


def _change_unclaimed(
    session: Session, registration_id: str, now: datetime, values: dict[str, Any]
) -> None:
    """Set ``values`` on the registration's pending deliveries that no worker holds."""
    session.execute(
        update(Delivery)
        .where(
            Delivery.registration_id == registration_id,
            Delivery.status == DeliveryStatus.PENDING,
            not_claimed(now),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _current_rev(session: Session, registration_id: str) -> str:
    rev = session.scalar(select(Registration.rev).where(Registration.id == registration_id))
    if rev is None:
        raise NotFound()
    return rev


def _refuse_duplicate(
    session: Session, *, owner: str, topic: str, url: str | None, except_id: str | None
) -> None:
    query = select(Registration.id).where(
        Registration.owner == owner,
        Registration.topic == topic,
        Registration.url_digest == url_digest(url),
    )
    if except_id is not None:
        query = query.where(Registration.id != except_id)
    existing = session.scalar(query)
    if existing is not None:
        raise DuplicateRegistration(existing, pull_only=url is None)


@contextmanager
def _duplicate_guard(
    session: Session, *, owner: str, topic: str, url: str | None, except_id: str | None
) -> Iterator[None]:
    """Turn a uniqueness violation from a concurrent writer into :class:`DuplicateRegistration`."""
    try:
        yield
    except IntegrityError:
        session.rollback()
        _refuse_duplicate(session, owner=owner, topic=topic, url=url, except_id=except_id)
        raise


def set_registration_state(
    session: Session, registration_id: str, *, state: str, now: datetime, reason: str
) -> tuple[Registration, bool]:
    """Enable or disable any registration (an operator's decision), and whether that changed
    its state; :class:`NotFound` if none."""
    registration = session.get(Registration, registration_id, with_for_update=True)
    if registration is None:
        raise NotFound()
    if registration.state == state:
        return registration, False
    change_state(registration, state, reason=reason, now=now)
    return registration, True


def set_options(
    session: Session, registration_id: str, options: Mapping[str, Any], *, now: datetime
) -> Registration:
    """Change any registration's delivery ``options`` (an operator's decision), as a new
    revision; :class:`NotFound` if none."""
    registration = session.get(Registration, registration_id, with_for_update=True)
    if registration is None:
        raise NotFound()
    if any(getattr(registration, name) != value for name, value in options.items()):
        revision = next_revision(
            registration, topic=registration.topic, url=registration.url, state=registration.state
        )
        before = registration.ordering
        _apply(registration, {**options, **revision, "updated_at": now})
        _ordering_changed(session, registration_id, before, options.get("ordering"))
    return registration


def _state_change(state: str, *, reason: str) -> dict[str, Any]:
    """The values that enable a registration (its record of failures cleared) or disable it
    for ``reason``."""
    if state == RegistrationState.ACTIVE:
        return {"state": state, "disabled_reason": None, **FAILURES_CLEARED}
    return {"state": state, "disabled_reason": reason}


def change_state(registration: Registration, state: str, *, reason: str, now: datetime) -> None:
    """Enable ``registration`` or disable it for ``reason`` (the owner can enable it again
    through the API), as a new revision."""
    revision = next_revision(
        registration, topic=registration.topic, url=registration.url, state=state
    )
    _apply(registration, {**_state_change(state, reason=reason), **revision, "updated_at": now})


def disable_if_active(
    session: Session, registration_id: str, *, reason: str, now: datetime
) -> bool:
    """Disable the registration if it is active and pushed to (a receiver's answer never
    disables a pull-only one, made so while an attempt was under way); True if this call
    disabled it."""
    registration = session.get(Registration, registration_id, with_for_update=True)
    if (
        registration is None
        or registration.state != RegistrationState.ACTIVE
        or registration.url is None
    ):
        return False
    change_state(registration, RegistrationState.DISABLED, reason=reason, now=now)
    return True


def reseal_secrets(session: Session, reseal: Callable[[str], str]) -> int:
    """Encrypt every stored secret again (the current one, and the previous one during a
    rotation's overlap), each row locked while it is rewritten; how many registrations."""
    registrations = session.scalars(
        select(Registration).order_by(Registration.id).with_for_update()
    ).all()
    for registration in registrations:
        registration.secret = reseal(registration.secret)
        if registration.previous_secret is not None:
            registration.previous_secret = reseal(registration.previous_secret)
    return len(registrations)
