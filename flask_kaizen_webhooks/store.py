"""Every query the extension runs. Functions flush but never commit: the caller owns the
transaction, so writes made inside a host's transaction commit or roll back with it."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import DuplicateRegistration, NotFound, RevConflict
from .models import Registration, RegistrationState, url_digest, utcnow


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a page of registrations ends: the sort key of its last item."""

    created_at: datetime
    id: str


def new_rev(number: int, previous: str | None, *parts: str) -> str:
    """A CouchDB-style revision, ``"N-<hex digest>"``, N counting the revisions.

    The digest covers the previous rev, the public content and a random salt, so two writes
    never produce the same rev and the secret never influences it.
    """
    material = json.dumps([number, previous, *parts, secrets.token_hex(8)])
    return f"{number}-{hashlib.sha256(material.encode()).hexdigest()[:32]}"


def create_registration(
    session: Session, *, owner: str, topic: str, url: str, secret: str
) -> Registration:
    """Add a registration; raise :class:`DuplicateRegistration` if the owner has it already."""
    _refuse_duplicate(session, owner=owner, topic=topic, url=url, except_id=None)
    now = utcnow()
    registration = Registration(
        id=str(uuid.uuid4()),
        owner=owner,
        topic=topic,
        url=url,
        url_digest=url_digest(url),
        secret=secret,
        rev=new_rev(1, None, topic, url, RegistrationState.ACTIVE),
        rev_number=1,
        state=RegistrationState.ACTIVE,
        created_at=now,
        updated_at=now,
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


def list_registrations(
    session: Session,
    *,
    owner: str,
    topic: str | None,
    after: PagePosition | None,
    limit: int,
) -> Sequence[Registration]:
    """Up to ``limit`` of the owner's registrations, oldest first, after ``after``."""
    query = select(Registration).where(Registration.owner == owner)
    if topic is not None:
        query = query.where(Registration.topic == topic)
    if after is not None:
        query = query.where(
            or_(
                Registration.created_at > after.created_at,
                and_(Registration.created_at == after.created_at, Registration.id > after.id),
            )
        )
    query = query.order_by(Registration.created_at, Registration.id).limit(limit)
    return session.scalars(query).all()


def update_registration(
    session: Session,
    *,
    owner: str,
    registration_id: str,
    rev: str | None,
    topic: str,
    url: str,
    secret: str | None,
) -> Registration:
    """Replace topic, url and (when given) secret, if ``rev`` is still the current rev."""
    current = get_registration(session, owner=owner, registration_id=registration_id)
    if rev != current.rev:
        raise RevConflict(current.rev, rev)
    _refuse_duplicate(session, owner=owner, topic=topic, url=url, except_id=current.id)
    number = current.rev_number + 1
    values: dict[str, object] = {
        "topic": topic,
        "url": url,
        "url_digest": url_digest(url),
        "rev": new_rev(number, current.rev, topic, url, current.state),
        "rev_number": number,
        "updated_at": utcnow(),
    }
    if secret is not None:
        values["secret"] = secret
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
    session.refresh(current)
    return current


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
    return current


def _current_rev(session: Session, registration_id: str) -> str:
    rev = session.scalar(select(Registration.rev).where(Registration.id == registration_id))
    if rev is None:
        raise NotFound()
    return rev


def _refuse_duplicate(
    session: Session, *, owner: str, topic: str, url: str, except_id: str | None
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
        raise DuplicateRegistration(existing)


@contextmanager
def _duplicate_guard(
    session: Session, *, owner: str, topic: str, url: str, except_id: str | None
) -> Iterator[None]:
    """Turn a uniqueness violation from a concurrent writer into :class:`DuplicateRegistration`."""
    try:
        yield
    except IntegrityError:
        session.rollback()
        _refuse_duplicate(session, owner=owner, topic=topic, url=url, except_id=except_id)
        raise
