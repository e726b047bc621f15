"""Every query the extension runs. Functions flush but never commit: the caller owns the
transaction, so writes made inside a host's transaction commit or roll back with it."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import claims
from .errors import (
    ApiError,
    DeliveryInFlight,
    DuplicateRegistration,
    NotFound,
    RegistrationDeleted,
    RegistrationDisabled,
    RevConflict,
)
from .models import (
    Attempt,
    CallCount,
    Delivery,
    DeliveryMode,
    DeliveryStatus,
    Event,
    Registration,
    RegistrationState,
    metadata,
    url_digest,
    utcnow,
)
from .prepared import Prepared
from .signing import with_request_ids

DELIVERIES = metadata.tables[Delivery.__tablename__]
EVENTS = metadata.tables[Event.__tablename__]
ATTEMPTS = metadata.tables[Attempt.__tablename__]
REGISTRATIONS = metadata.tables[Registration.__tablename__]
_OUTBOX_INSERT = Prepared(
    insert(DELIVERIES),
    column_keys=(
        "id",
        "registration_id",
        "owner",
        "topic",
        "mode",
        "payload",
        "status",
        "attempts",
        "retry_index",
        "next_attempt_at",
        "created_at",
        "updated_at",
    ),
)

_INSERT_DELIVERIES = insert(DELIVERIES)
_INSERT_ATTEMPTS = insert(ATTEMPTS)
_EVENT_INSERT = Prepared(
    insert(EVENTS), column_keys=("id", "topic", "document", "recipients", "created_at")
)
#: The most events one fan-out turns into deliveries.
FAN_OUT_BATCH = 200


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a page of registrations or deliveries ends: the sort key of its last item."""

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
    session: Session,
    *,
    owner: str,
    topic: str,
    url: str,
    sealed_secret: str,
    limit: int | None = None,
) -> Registration:
    """Add a registration; raise :class:`DuplicateRegistration` if the owner has it already."""
    _refuse_duplicate(session, owner=owner, topic=topic, url=url, except_id=None)
    if limit is not None:
        count = session.scalar(
            select(func.count()).select_from(Registration).where(Registration.owner == owner)
        )
        if (count or 0) >= limit:
            raise ApiError(
                422,
                "registration_limit",
                f"You have {count} registrations, the most allowed; delete one first.",
                limit=limit,
            )
    now = utcnow()
    registration = Registration(
        id=str(uuid.uuid4()),
        owner=owner,
        topic=topic,
        url=url,
        url_digest=url_digest(url),
        secret=sealed_secret,
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
    sealed_secret: str | None,
    state: str | None = None,
    overlap: timedelta = timedelta(0),
) -> Registration:
    """Replace topic, url and (when given) secret and state, if ``rev`` is still current.

    Enabling a registration clears its record of failures.
    """
    current = get_registration(session, owner=owner, registration_id=registration_id)
    if rev != current.rev:
        raise RevConflict(current.rev, rev)
    _refuse_duplicate(session, owner=owner, topic=topic, url=url, except_id=current.id)
    number = current.rev_number + 1
    new_state = state or current.state
    values: dict[str, object] = {
        "topic": topic,
        "url": url,
        "url_digest": url_digest(url),
        "state": new_state,
        "rev": new_rev(number, current.rev, topic, url, new_state),
        "rev_number": number,
        "updated_at": utcnow(),
    }
    if sealed_secret is not None:
        values.update(_rotation(current, sealed_secret, overlap))
    if new_state == RegistrationState.ACTIVE and current.state != RegistrationState.ACTIVE:
        values.update(consecutive_failures=0, failing_since=None, disabled_reason=None)
    elif new_state == RegistrationState.DISABLED and current.state != RegistrationState.DISABLED:
        values["disabled_reason"] = "disabled by its owner"
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
    session.execute(
        update(Delivery)
        .where(
            Delivery.registration_id == registration_id,
            Delivery.status == DeliveryStatus.PENDING,
            _not_claimed(now),
        )
        .values(**_ended_unsent(error, now))
        .execution_options(synchronize_session=False)
    )


def _ended_unsent(error: str, now: datetime) -> dict[str, Any]:
    """The values that end a pending delivery that will not be sent, failed with ``error``."""
    return {
        "status": DeliveryStatus.FAILED,
        "last_error": error,
        "claim_token": None,
        "next_attempt_at": None,
        "completed_at": now,
        "updated_at": now,
    }


def _not_claimed(now: datetime) -> Any:
    """Deliveries no worker holds: never claimed, or their claim's lease has run out."""
    return or_(Delivery.claim_token.is_(None), Delivery.next_attempt_at <= now)


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


# Deliveries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What a delivery needs of its registration, detached from any session."""

    registration_id: str
    owner: str
    url: str
    #: The secret as stored (sealed); opened only to sign.
    sealed_secret: str
    secret_version: int = 1
    #: During a rotation's overlap, the previous secret (sealed) and when it stops signing.
    previous_sealed_secret: str | None = None
    previous_secret_until: datetime | None = None

    @classmethod
    def of(cls, registration: Registration) -> Target:
        """The target of ``registration``."""
        return cls(
            registration.id,
            registration.owner,
            registration.url,
            registration.secret,
            registration.secret_version,
            registration.previous_secret,
            None
            if registration.previous_secret_until is None
            else as_utc(registration.previous_secret_until),
        )


TARGET_COLUMNS = (
    Registration.id,
    Registration.owner,
    Registration.url,
    Registration.secret,
    Registration.secret_version,
    Registration.previous_secret,
    Registration.previous_secret_until,
)


_ACTIVE_RECIPIENTS = Prepared(
    select(Registration.id, Registration.owner)
    .where(
        Registration.topic == bindparam("topic"),
        Registration.state == RegistrationState.ACTIVE,
    )
    .order_by(Registration.created_at)
)


_ACTIVE_TARGETS = Prepared(
    select(*TARGET_COLUMNS)
    .where(
        Registration.topic == bindparam("topic"),
        Registration.state == RegistrationState.ACTIVE,
    )
    .order_by(Registration.created_at)
)


def active_recipients(connection: Connection, *, topic: str) -> list[tuple[str, str]]:
    """The id and owner of every active registration of ``topic``, oldest first: what an
    event's outbox rows need, read on the host's request path."""
    return [
        (registration_id, owner)
        for registration_id, owner in _ACTIVE_RECIPIENTS.rows(connection, {"topic": topic})
    ]


def active_targets(
    session: Session,
    *,
    topic: str,
    owner: str | None = None,
    registration_id: str | None = None,
) -> list[Target]:
    """The active registrations of ``topic``, optionally one owner's; or the one registration
    ``registration_id`` of ``topic``, active or not (for tests of a disabled endpoint)."""
    if owner is None and registration_id is None:  # a synchronous topic's: on the host's path
        rows = _ACTIVE_TARGETS.rows(session.connection(), {"topic": topic})
        return [_target(*row) for row in rows]
    query = select(*TARGET_COLUMNS).where(Registration.topic == topic)
    if owner is not None:
        query = query.where(Registration.owner == owner)
    if registration_id is not None:
        query = query.where(Registration.id == registration_id)
    else:
        query = query.where(Registration.state == RegistrationState.ACTIVE)
    return [_target(*row) for row in session.execute(query.order_by(Registration.created_at))]


def _target(
    registration_id: str,
    owner: str,
    url: str,
    sealed_secret: str,
    secret_version: int,
    previous_sealed_secret: str | None,
    previous_secret_until: datetime | None,
) -> Target:
    """A :class:`Target` from a row of :data:`TARGET_COLUMNS`."""
    until = None if previous_secret_until is None else as_utc(previous_secret_until)
    return Target(
        registration_id, owner, url, sealed_secret, secret_version, previous_sealed_secret, until
    )


def add_deliveries(
    connection: Connection,
    *,
    recipients: Sequence[tuple[str, str]],
    topic: str,
    mode: str,
    document_json: str,
    now: datetime,
) -> list[str]:
    """Write outbox rows of one event (its JSON), one per recipient (registration id and
    owner), each with its own ``webhook_request_id``, due now; their ids. One executemany on
    ``connection`` (the session's, so they commit or roll back with its transaction)."""
    if not recipients:
        return []
    ids = time_ordered_ids(len(recipients))
    _insert_deliveries(
        connection,
        [(delivery_id, *recipient) for delivery_id, recipient in zip(ids, recipients, strict=True)],
        topic=topic,
        mode=mode,
        document_json=document_json,
        now=now,
    )
    return ids


def add_event(
    connection: Connection,
    *,
    recipients: Sequence[tuple[str, str]],
    topic: str,
    document_json: str,
    now: datetime,
) -> list[str]:
    """Write one outbox row for an asynchronous event and all its recipients (registration id
    and owner), to be fanned out into deliveries by :func:`fan_out` once committed; the ids the
    deliveries will have. Nothing is written when there are no recipients."""
    if not recipients:
        return []
    event_id, *ids = time_ordered_ids(len(recipients) + 1)
    listed = [
        [delivery_id, *recipient] for delivery_id, recipient in zip(ids, recipients, strict=True)
    ]
    _EVENT_INSERT.insert_many(
        connection,
        {"topic": topic, "document": document_json, "created_at": now},
        ("id", "recipients"),
        [(event_id, json.dumps(listed, separators=(",", ":")))],
    )
    return ids


def fan_out(session: Session, *, limit: int = FAN_OUT_BATCH, wait: bool = False) -> list[str]:
    """Turn the oldest committed events (up to ``limit``) into their deliveries, due from the
    moment each event was fired, and delete them, in ``session``'s transaction; the ids of the
    deliveries written. Events another transaction is fanning out are skipped, or, with
    ``wait``, waited for (they are gone once it commits)."""
    connection = session.connection()
    events = connection.execute(
        select(
            EVENTS.c.id, EVENTS.c.topic, EVENTS.c.document, EVENTS.c.recipients, EVENTS.c.created_at
        )
        .order_by(EVENTS.c.id)
        .limit(limit)
        .with_for_update(skip_locked=not wait)
    ).all()
    written: list[str] = []
    for event in events:
        recipients = [tuple(recipient) for recipient in json.loads(event.recipients)]
        _insert_deliveries(
            connection,
            recipients,
            topic=event.topic,
            mode=DeliveryMode.ASYNC,
            document_json=event.document,
            now=event.created_at,
        )
        written += [delivery_id for delivery_id, _, _ in recipients]
    if events:
        connection.execute(delete(EVENTS).where(EVENTS.c.id.in_([event.id for event in events])))
    return written


def _insert_deliveries(
    connection: Connection,
    recipients: Sequence[tuple[str, str, str]],
    *,
    topic: str,
    mode: str,
    document_json: str,
    now: datetime,
) -> None:
    """One executemany of pending deliveries: ``recipients`` are (delivery id, registration
    id, owner); each payload is the event's JSON with its ``webhook_request_id``."""
    shared = {
        "topic": topic,
        "mode": mode,
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "retry_index": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
    ids = [delivery_id for delivery_id, _, _ in recipients]
    rows = [
        (delivery_id, registration_id, owner, payload)
        for (delivery_id, registration_id, owner), payload in zip(
            recipients, with_request_ids(document_json, ids), strict=True
        )
    ]
    _OUTBOX_INSERT.insert_many(
        connection, shared, ("id", "registration_id", "owner", "payload"), rows
    )


def time_ordered_ids(count: int) -> list[str]:
    """``count`` new UUIDs (version 7, RFC 9562: a millisecond timestamp, then 74 random
    bits), so that new rows land together at the end of the primary key's index rather than
    all over it."""
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    head = f"{stamp[:8]}-{stamp[8:]}-7"
    noise = os.urandom(10 * count).hex()
    ids = []
    for start in range(0, 20 * count, 20):
        bits = noise[start : start + 20]
        variant = "89ab"[int(bits[3], 16) & 3]
        ids.append(f"{head}{bits[:3]}-{variant}{bits[4:7]}-{bits[7:19]}")
    return ids


@dataclass(frozen=True, slots=True)
class Finished:
    """A delivery made at once (synchronous or a test), with its single attempt."""

    delivery_id: str
    target: Target
    payload: str
    succeeded: bool
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    elapsed: float


def log_finished(
    session: Session,
    finished: Sequence[Finished],
    *,
    topic: str,
    mode: str,
    started_at: datetime,
    now: datetime,
) -> None:
    """Record deliveries made at once, each with its single attempt, in two statements."""
    if not finished:
        return
    connection = session.connection()
    connection.execute(
        _INSERT_DELIVERIES,
        [
            {
                "id": entry.delivery_id,
                "registration_id": entry.target.registration_id,
                "owner": entry.target.owner,
                "topic": topic,
                "mode": mode,
                "payload": entry.payload,
                "status": DeliveryStatus.SUCCEEDED if entry.succeeded else DeliveryStatus.FAILED,
                "attempts": 1,
                "retry_index": 0,
                "next_attempt_at": None,
                "last_status_code": entry.status_code,
                "last_error": entry.error,
                "response_excerpt": entry.response_excerpt,
                "created_at": started_at,
                "updated_at": now,
                "completed_at": now,
            }
            for entry in finished
        ],
    )
    connection.execute(
        _INSERT_ATTEMPTS,
        [
            {
                "delivery_id": entry.delivery_id,
                "number": 1,
                "started_at": started_at,
                "elapsed": entry.elapsed,
                "status_code": entry.status_code,
                "error": entry.error,
                "response_excerpt": entry.response_excerpt,
            }
            for entry in finished
        ],
    )


def _due_statement(*, skipping: bool) -> Any:
    """The ids of up to ``b_limit`` due deliveries, oldest due first, locked (skipping rows
    other claimers hold), leaving those of registrations ``b_skip`` alone when ``skipping``."""
    columns = DELIVERIES.c
    due = select(columns.id).where(
        columns.status == DeliveryStatus.PENDING, columns.next_attempt_at <= bindparam("b_now")
    )
    if skipping:
        due = due.where(columns.registration_id.not_in(bindparam("b_skip", expanding=True)))
    return (
        due.order_by(columns.next_attempt_at)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )


# Built once: claiming runs for every few deliveries. Two statements rather than one
# ``UPDATE ... WHERE id IN (SELECT ...)``, which PostgreSQL may plan as a scan of every
# pending row; here the update finds its rows by primary key.
_DUE = {skipping: _due_statement(skipping=skipping) for skipping in (False, True)}
_TAKE = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(claim_token=bindparam("b_token"), next_attempt_at=bindparam("b_lease_until"))
    .returning(
        DELIVERIES.c.id,
        DELIVERIES.c.topic,
        DELIVERIES.c.payload,
        DELIVERIES.c.attempts,
        DELIVERIES.c.retry_index,
        DELIVERIES.c.registration_id,
    )
)
_TARGETS_OF = select(*TARGET_COLUMNS, Registration.state).where(
    Registration.id.in_(bindparam("b_ids", expanding=True))
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed delivery with what its attempt needs; ``target`` is None when its registration
    was deleted or disabled meanwhile."""

    delivery_id: str
    token: str
    topic: str
    payload: str
    attempts: int
    retry_index: int
    registration_id: str
    target: Target | None
    #: When the claim's lease runs out, unless renewed.
    lease_until: datetime


def claim_due(
    session: Session,
    *,
    now: datetime,
    lease_until: datetime,
    token: str,
    limit: int,
    skip_registrations: Collection[str] = (),
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries, oldest due first, leaving those of
    ``skip_registrations`` alone, and load them with their registrations; no two claimers get
    the same row.

    PostgreSQL skips rows other claimers hold (``FOR UPDATE SKIP LOCKED``); SQLite runs one
    writer at a time, which makes the same statement exclusive there.
    """
    connection = session.connection()
    params: dict[str, Any] = {"b_now": now, "b_limit": limit}
    if skip_registrations:
        params["b_skip"] = sorted(skip_registrations)
    ids = list(connection.execute(_DUE[bool(skip_registrations)], params).scalars())
    return _take(connection, ids, token=token, lease_until=lease_until)


_DUE_ONE = (
    select(DELIVERIES.c.id)
    .where(
        DELIVERIES.c.id == bindparam("b_id"),
        DELIVERIES.c.status == DeliveryStatus.PENDING,
        DELIVERIES.c.next_attempt_at <= bindparam("b_now"),
    )
    .with_for_update(skip_locked=True)
)


def claim_one(
    session: Session,
    *,
    delivery_id: str,
    now: datetime,
    lease_until: datetime,
    token: str,
    fan_out_first: bool = False,
) -> Claimed | None:
    """Claim delivery ``delivery_id`` if it is due and nobody holds it, and load it with its
    registration; None otherwise (sent already, not due yet, or another worker's).

    With ``fan_out_first``, a delivery not found may be part of an event not fanned out yet:
    the waiting events are fanned out, waiting for those another transaction is fanning out
    (the events of one commit are often claimed at once, each by its own task), and it is
    looked for again."""
    connection = session.connection()
    for look in range(2 if fan_out_first else 1):
        if look:
            fan_out(session, wait=True)
        ids = list(connection.execute(_DUE_ONE, {"b_id": delivery_id, "b_now": now}).scalars())
        claimed = _take(connection, ids, token=token, lease_until=lease_until)
        if claimed:
            return claimed[0]
    return None


def overdue(session: Session, *, due_before: datetime, limit: int) -> list[str]:
    """Pending deliveries due before ``due_before`` (their claims run out by then, if any),
    oldest first: work whose task or worker went missing."""
    query = (
        select(DELIVERIES.c.id)
        .where(
            DELIVERIES.c.status == DeliveryStatus.PENDING,
            DELIVERIES.c.next_attempt_at <= due_before,
        )
        .order_by(DELIVERIES.c.next_attempt_at)
        .limit(limit)
    )
    return list(session.execute(query).scalars())


def _take(
    connection: Connection, ids: list[str], *, token: str, lease_until: datetime
) -> list[Claimed]:
    """Claim the (locked, due) deliveries ``ids`` with ``token`` until ``lease_until``; them,
    loaded with their registrations."""
    if not ids:
        return []
    rows = connection.execute(
        _TAKE, {"b_ids": ids, "b_token": token, "b_lease_until": lease_until}
    ).all()
    targets: dict[str, Target | None] = {}
    registration_ids = sorted({row.registration_id for row in rows})
    row: Any
    for row in connection.execute(_TARGETS_OF, {"b_ids": registration_ids}):
        *target, state = row  # TARGET_COLUMNS, then the registration's state
        targets[row[0]] = _target(*target) if state == RegistrationState.ACTIVE else None
    return [
        Claimed(
            delivery_id,
            token,
            topic,
            payload,
            attempts,
            retry_index,
            registration_id,
            targets.get(registration_id),
            lease_until,
        )
        for delivery_id, topic, payload, attempts, retry_index, registration_id in rows
    ]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of a claimed delivery and what follows it, ready to be written.

    ``kind`` is ``succeeded``, ``retry`` (again at ``retry_at``), ``failed`` or ``gone``.
    """

    delivery_id: str
    token: str
    registration_id: str
    topic: str
    number: int
    retry_index: int
    started_at: datetime
    finished_at: datetime
    elapsed: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    kind: str
    retry_at: datetime | None = None

    @property
    def final(self) -> bool:
        """True when the delivery ends with this attempt."""
        return self.kind != "retry"


@dataclass(frozen=True, slots=True)
class Recorded:
    """What :func:`record_attempts` wrote: the records whose claim still held, and the
    registrations it disabled, with why."""

    kept: list[AttemptRecord]
    disabled: dict[str, str]


_RECORD_UPDATE = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        retry_index=bindparam("b_retry_index"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        claim_token=None,
        last_status_code=bindparam("b_status_code"),
        last_error=bindparam("b_error"),
        response_excerpt=bindparam("b_excerpt"),
        updated_at=bindparam("b_now"),
        completed_at=bindparam("b_completed_at"),
    )
)


_HELD = (
    select(DELIVERIES.c.id, DELIVERIES.c.claim_token)
    .where(DELIVERIES.c.id.in_(bindparam("b_ids", expanding=True)))
    .with_for_update()
)
_HEALTHY = (
    update(REGISTRATIONS)
    .where(
        REGISTRATIONS.c.id.in_(bindparam("b_ids", expanding=True)),
        REGISTRATIONS.c.consecutive_failures > 0,
    )
    .values(consecutive_failures=0, failing_since=None)
)


def record_attempts(
    session: Session,
    records: Sequence[AttemptRecord],
    *,
    disable_after_failures: int,
    disable_after: timedelta,
) -> Recorded:
    """Write many attempts and their deliveries' new states in a few statements.

    A record whose claim was lost meanwhile (its lease ran out and another worker took the
    delivery) is left out. Registrations are kept in step: a 410 disables one, a success ends
    its run of failures, a long run of failures disables it.
    """
    if not records:
        return Recorded([], {})
    connection = session.connection()
    held = dict(
        connection.execute(
            _HELD, {"b_ids": sorted({record.delivery_id for record in records})}
        ).all()
    )
    kept = [record for record in records if held.get(record.delivery_id) == record.token]
    if not kept:
        return Recorded([], {})
    connection.execute(_RECORD_UPDATE, [_delivery_values(record) for record in kept])
    connection.execute(
        _INSERT_ATTEMPTS,
        [
            {
                "delivery_id": record.delivery_id,
                "number": record.number,
                "started_at": record.started_at,
                "elapsed": record.elapsed,
                "status_code": record.status_code,
                "error": record.error,
                "response_excerpt": record.response_excerpt,
            }
            for record in kept
        ],
    )
    disabled = _registration_health(
        session,
        [record for record in kept if record.final],
        disable_after_failures=disable_after_failures,
        disable_after=disable_after,
    )
    return Recorded(kept, disabled)


def _delivery_values(record: AttemptRecord) -> dict[str, Any]:
    retry = record.kind == "retry"
    if retry:
        status = DeliveryStatus.PENDING
    elif record.kind == "succeeded":
        status = DeliveryStatus.SUCCEEDED
    else:
        status = DeliveryStatus.FAILED
    return {
        "b_id": record.delivery_id,
        "b_status": status,
        "b_attempts": record.number,
        "b_retry_index": record.retry_index + 1 if retry else record.retry_index,
        "b_next_attempt_at": record.retry_at if retry else None,
        "b_status_code": record.status_code,
        "b_error": record.error,
        "b_excerpt": record.response_excerpt,
        "b_now": record.finished_at,
        "b_completed_at": None if retry else record.finished_at,
    }


def _registration_health(
    session: Session,
    finals: Sequence[AttemptRecord],
    *,
    disable_after_failures: int,
    disable_after: timedelta,
) -> dict[str, str]:
    """Apply ended deliveries to their registrations; the ones disabled, with why."""
    disabled: dict[str, str] = {}
    healthy = {record.registration_id for record in finals if record.kind == "succeeded"}
    unhealthy = {record.registration_id for record in finals if record.kind != "succeeded"}
    if healthy - unhealthy:  # the common case: one statement for every registration doing well
        session.connection().execute(_HEALTHY, {"b_ids": sorted(healthy - unhealthy)})
    for record in finals:  # in order, for registrations with a failure among them
        if record.registration_id not in unhealthy or record.registration_id in disabled:
            continue
        if record.kind == "gone":
            reason = "the receiver answered 410 Gone"
            if disable_if_active(
                session, record.registration_id, reason=reason, now=record.finished_at
            ):
                disabled[record.registration_id] = reason
            continue
        reason_or_none = note_delivery_outcome(
            session,
            registration_id=record.registration_id,
            succeeded=record.kind == "succeeded",
            now=record.finished_at,
            disable_after_failures=disable_after_failures,
            disable_after=disable_after,
        )
        if reason_or_none is not None:
            disabled[record.registration_id] = reason_or_none
    return disabled


def release_claims(session: Session, claims: Sequence[tuple[str, str]], *, due: datetime) -> None:
    """Give claimed deliveries (id, token) back unattempted, due at ``due``."""
    if not claims:
        return
    session.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id == bindparam("b_id"), DELIVERIES.c.claim_token == bindparam("b_token")
        )
        .values(claim_token=None, next_attempt_at=due),
        [{"b_id": delivery_id, "b_token": token} for delivery_id, token in claims],
    )


def note_delivery_outcome(
    session: Session,
    *,
    registration_id: str,
    succeeded: bool,
    now: datetime,
    disable_after_failures: int,
    disable_after: timedelta,
) -> str | None:
    """Track a registration's run of failed deliveries; the reason if this one disables it."""
    if succeeded:
        session.execute(
            update(Registration)
            .where(Registration.id == registration_id, Registration.consecutive_failures > 0)
            .values(consecutive_failures=0, failing_since=None)
            .execution_options(synchronize_session=False)
        )
        return None
    registration = session.get(Registration, registration_id, with_for_update=True)
    if registration is None or registration.state != RegistrationState.ACTIVE:
        return None
    registration.consecutive_failures += 1
    if registration.failing_since is None:
        registration.failing_since = now
    failing_for = now - as_utc(registration.failing_since)
    if registration.consecutive_failures >= disable_after_failures and failing_for >= disable_after:
        reason = (
            f"{registration.consecutive_failures} deliveries in a row failed for good over "
            f"{failing_for.total_seconds() / 3600:.1f} h"
        )
        disable_registration(session, registration, reason=reason, now=now)
        return reason
    return None


def disable_registration(
    session: Session, registration: Registration, *, reason: str, now: datetime
) -> None:
    """Stop delivering to ``registration``; the owner can re-enable it through the API."""
    number = registration.rev_number + 1
    registration.state = RegistrationState.DISABLED
    registration.disabled_reason = reason
    registration.rev = new_rev(
        number, registration.rev, registration.topic, registration.url, RegistrationState.DISABLED
    )
    registration.rev_number = number
    registration.updated_at = now


def disable_if_active(
    session: Session, registration_id: str, *, reason: str, now: datetime
) -> bool:
    """Disable the registration if it is active; True if this call disabled it."""
    registration = session.get(Registration, registration_id, with_for_update=True)
    if registration is None or registration.state != RegistrationState.ACTIVE:
        return False
    disable_registration(session, registration, reason=reason, now=now)
    return True


def list_deliveries(
    session: Session,
    *,
    owner: str,
    registration_id: str,
    before: PagePosition | None,
    limit: int,
) -> Sequence[Delivery]:
    """Up to ``limit`` deliveries of one registration, newest first, older than ``before``."""
    query = select(Delivery).where(
        Delivery.owner == owner, Delivery.registration_id == registration_id
    )
    if before is not None:
        query = query.where(
            or_(
                Delivery.created_at < before.created_at,
                and_(Delivery.created_at == before.created_at, Delivery.id < before.id),
            )
        )
    query = query.order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit)
    return session.scalars(query).all()


def get_delivery(session: Session, *, owner: str, delivery_id: str) -> Delivery:
    """The owner's delivery, or :class:`NotFound`."""
    delivery = session.scalars(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.owner == owner)
    ).one_or_none()
    if delivery is None:
        raise NotFound("No such delivery.")
    return delivery


def attempts_of(session: Session, delivery_id: str) -> Sequence[Attempt]:
    """Every attempt of a delivery, first first."""
    return session.scalars(
        select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(Attempt.number)
    ).all()


def redeliver(session: Session, *, owner: str, delivery_id: str, now: datetime) -> None:
    """Queue the owner's delivery again, now, with a fresh retry schedule and the same id;
    :class:`RegistrationDeleted` or :class:`RegistrationDisabled` when its registration is not
    active, :class:`DeliveryInFlight` while an attempt of it is under way."""
    get_delivery(session, owner=owner, delivery_id=delivery_id)
    requeued = queue_again(session, [delivery_id], now=now)
    if requeued.registration_deleted:
        raise RegistrationDeleted()
    if requeued.registration_disabled:
        raise RegistrationDisabled()
    if requeued.in_flight:
        raise DeliveryInFlight()


def as_utc(moment: datetime) -> datetime:
    """``moment`` made timezone-aware; the database may hand back naive UTC times."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def finish_without_attempt(
    session: Session, *, delivery_id: str, token: str, error: str, now: datetime
) -> bool:
    """Fail a claimed delivery that cannot be sent; False if the claim was lost."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.claim_token == token)
        .values(**_ended_unsent(error, now))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release_dead_claims(session: Session, *, now: datetime) -> int:
    """Give back, due now, the claims held by processes of this machine that no longer run
    (see :mod:`.claims`); how many deliveries."""
    me = claims.this_process()
    tokens = session.scalars(
        select(Delivery.claim_token)
        .where(
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at > now,
            Delivery.claim_token.like(f"{me.machine}-%"),
        )
        .distinct()
    ).all()
    runs: dict[claims.Holder, bool] = {me: True}
    dead = []
    for token in tokens:
        holder = claims.Holder.of(token or "")
        if holder is None:
            continue
        if holder not in runs:
            runs[holder] = holder.runs()
        if not runs[holder]:
            dead.append(token)
    if not dead:
        return 0
    released = session.execute(
        update(Delivery)
        .where(Delivery.claim_token.in_(dead), Delivery.status == DeliveryStatus.PENDING)
        .values(claim_token=None, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(released.rowcount)  # type: ignore[attr-defined]


def extend_claim(session: Session, *, delivery_id: str, token: str, lease_until: datetime) -> bool:
    """Renew this worker's lease on a delivery as its attempt starts; False if it was lost."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.claim_token == token,
            Delivery.status == DeliveryStatus.PENDING,
        )
        .values(next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


# Operations ----------------------------------------------------------------------------------


def find_registrations(
    session: Session, *, topic: str | None, owner: str | None, state: str | None
) -> Sequence[Registration]:
    """Every registration (of any owner), filtered, oldest first."""
    query = _matching_registrations(select(Registration), topic=topic, owner=owner, state=state)
    return session.scalars(query.order_by(Registration.created_at, Registration.id)).all()


def retrying_counts(
    session: Session, *, topic: str | None, owner: str | None, state: str | None
) -> dict[str, int]:
    """How many deliveries of each registration :func:`find_registrations` finds wait for a
    retry after a failed attempt (pending, with an attempt made), in one grouped query;
    registrations without any are left out."""
    matching = _matching_registrations(
        select(Registration.id), topic=topic, owner=owner, state=state
    )
    rows = session.execute(
        select(Delivery.registration_id, func.count())
        .where(
            Delivery.registration_id.in_(matching),
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.attempts > 0,
        )
        .group_by(Delivery.registration_id)
    )
    return {registration_id: count for registration_id, count in rows}


def _matching_registrations(
    query: Select[Any], *, topic: str | None, owner: str | None, state: str | None
) -> Select[Any]:
    """``query`` of registrations narrowed to a topic, an owner and a state, where given."""
    if topic is not None:
        query = query.where(Registration.topic == topic)
    if owner is not None:
        query = query.where(Registration.owner == owner)
    if state is not None:
        query = query.where(Registration.state == state)
    return query


def find_deliveries(
    session: Session,
    *,
    status: str | None,
    registration_id: str | None,
    since: datetime | None,
    until: datetime | None = None,
    limit: int | None,
) -> Sequence[Delivery]:
    """Deliveries of any owner, filtered, newest first."""
    query = select(Delivery)
    if status is not None:
        query = query.where(Delivery.status == status)
    if registration_id is not None:
        query = query.where(Delivery.registration_id == registration_id)
    if since is not None:
        query = query.where(Delivery.created_at >= since)
    if until is not None:
        query = query.where(Delivery.created_at < until)
    query = query.order_by(Delivery.created_at.desc(), Delivery.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return session.scalars(query).all()


@dataclass(frozen=True, slots=True)
class Requeued:
    """What :func:`queue_again` did with each delivery it was given."""

    queued: list[str]
    #: Left alone: an attempt of each is under way.
    in_flight: list[str]
    #: Left alone: their registration was deleted, or is disabled.
    registration_deleted: list[str]
    registration_disabled: list[str]


def queue_again(session: Session, delivery_ids: Sequence[str], *, now: datetime) -> Requeued:
    """Queue deliveries again now with a fresh retry schedule, if their registration is active.

    A delivery with an attempt under way (claimed, its lease running) is left alone: queuing it
    would let a second worker send it in parallel. So is one whose registration was deleted or
    is disabled: it would only fail again unsent.
    """
    if not delivery_ids:
        return Requeued([], [], [], [])
    active = select(Registration.id).where(Registration.state == RegistrationState.ACTIVE)
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(delivery_ids),
            Delivery.registration_id.in_(active),
            _not_claimed(now),
        )
        .values(
            status=DeliveryStatus.PENDING,
            retry_index=0,
            next_attempt_at=now,
            claim_token=None,
            completed_at=None,
            updated_at=now,
        )
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    queued = list(result.scalars())
    left = sorted(set(delivery_ids) - set(queued))
    states: dict[str, str | None] = {}
    if left:
        rows = session.execute(
            select(Delivery.id, Registration.state)
            .outerjoin(Registration, Registration.id == Delivery.registration_id)
            .where(Delivery.id.in_(left))
        )
        states = {delivery_id: state for delivery_id, state in rows}
    return Requeued(
        queued,
        in_flight=[i for i in left if states.get(i) == RegistrationState.ACTIVE],
        registration_deleted=[i for i in left if states.get(i) is None],
        registration_disabled=[
            i for i in left if states.get(i) not in (None, RegistrationState.ACTIVE)
        ],
    )


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


def set_registration_state(
    session: Session, registration_id: str, *, state: str, now: datetime, reason: str
) -> Registration:
    """Enable or disable any registration (an operator's decision); :class:`NotFound` if none."""
    registration = session.get(Registration, registration_id, with_for_update=True)
    if registration is None:
        raise NotFound()
    if registration.state == state:
        return registration
    if state == RegistrationState.DISABLED:
        disable_registration(session, registration, reason=reason, now=now)
        return registration
    number = registration.rev_number + 1
    registration.state = RegistrationState.ACTIVE
    registration.disabled_reason = None
    registration.consecutive_failures = 0
    registration.failing_since = None
    registration.rev = new_rev(
        number, registration.rev, registration.topic, registration.url, RegistrationState.ACTIVE
    )
    registration.rev_number = number
    registration.updated_at = now
    return registration


def purge_completed(session: Session, *, before: datetime) -> tuple[int, int]:
    """Delete finished deliveries completed before ``before`` with their attempts; pending ones
    are never touched. Returns (deliveries, attempts) deleted."""
    done = select(Delivery.id).where(
        Delivery.status.in_([DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED]),
        Delivery.completed_at < before,
    )
    attempts = session.execute(
        delete(Attempt)
        .where(Attempt.delivery_id.in_(done))
        .execution_options(synchronize_session=False)
    )
    deliveries = session.execute(
        delete(Delivery).where(Delivery.id.in_(done)).execution_options(synchronize_session=False)
    )
    return deliveries.rowcount, attempts.rowcount  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts of deliveries per status and topic (tests left out), the test deliveries and how
    many of them failed, the events not fanned out yet, and the creation of the oldest pending
    one (delivery or event)."""

    counts: dict[tuple[str, str], int]
    oldest_pending: datetime | None
    events_waiting: int = 0
    tests: int = 0
    tests_failed: int = 0
    #: Pending deliveries a worker holds a claim on (being sent), and when the last claim ends.
    claimed: int = 0
    claimed_until: datetime | None = None


def delivery_stats(session: Session, *, now: datetime) -> Stats:
    """How many deliveries there are per (topic, status), tests apart, how many events wait for
    their fan-out, and how old the oldest pending work is."""
    rows = session.execute(
        select(Delivery.topic, Delivery.status, func.count())
        .where(Delivery.mode != DeliveryMode.TEST)
        .group_by(Delivery.topic, Delivery.status)
    )
    counts = {(topic, status): count for topic, status, count in rows}
    tests = dict(
        session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.mode == DeliveryMode.TEST)
            .group_by(Delivery.status)
        ).all()
    )
    oldest_delivery = session.scalar(
        select(func.min(Delivery.created_at)).where(Delivery.status == DeliveryStatus.PENDING)
    )
    waiting, oldest_event = session.execute(
        select(func.count(), func.min(Event.created_at)).select_from(Event)
    ).one()
    claimed, claimed_until = session.execute(
        select(func.count(), func.max(Delivery.next_attempt_at)).where(
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.claim_token.is_not(None),
            Delivery.next_attempt_at > now,
        )
    ).one()
    oldest = [as_utc(moment) for moment in (oldest_delivery, oldest_event) if moment is not None]
    return Stats(
        counts=counts,
        oldest_pending=min(oldest, default=None),
        events_waiting=int(waiting),
        tests=sum(tests.values()),
        tests_failed=tests.get(DeliveryStatus.FAILED, 0),
        claimed=int(claimed),
        claimed_until=None if claimed_until is None else as_utc(claimed_until),
    )


def count_call(session: Session, *, key: str, minute: int) -> int:
    """Count one call of ``key`` in ``minute`` (minutes since the epoch); the calls counted in
    that minute so far, this one included, in one atomic step however many processes count
    at once. Counts of earlier minutes (anyone's) are deleted."""
    session.execute(  # everyone's earlier minutes: owners who stopped calling leave no rows
        delete(CallCount)
        .where(CallCount.minute < minute)
        .execution_options(synchronize_session=False)
    )
    dialect = session.get_bind().dialect.name
    upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    counted = (
        upsert(CallCount)
        .values(key=key, minute=minute, count=1)
        .on_conflict_do_update(
            index_elements=[CallCount.key, CallCount.minute], set_={"count": CallCount.count + 1}
        )
        .returning(CallCount.count)
    )
    return int(session.execute(counted).scalar_one())
