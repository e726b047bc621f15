"""The outbox: the registrations an event goes to, its rows written on the host's request path
(one per delivery, or one for the event inside the host's transaction), and the events fanned
out into deliveries once committed."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from ..signing import with_request_ids
from ..topics import Mode
from .prepared import Prepared
from .rows import DELIVERIES, EVENTS, TARGET_COLUMNS, Target, target_from_row
from .tables import DeliveryStatus, Registration, RegistrationState

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
        "completed_at",
        "created_at",
        "updated_at",
        "trace_parent",
        "queued_at",
    ),
)

#: An event's recipient: registration id, owner, and whether it is pull-only.
Recipient = tuple[str, str, bool]
#: A recipient with the id of its delivery first.
Addressed = tuple[str, str, str, bool]


_EVENT_INSERT = Prepared(
    insert(EVENTS),
    column_keys=("id", "topic", "document", "recipients", "created_at", "trace_parent"),
)


#: The most events one fan-out turns into deliveries.
EXPAND_BATCH = 200


_ACTIVE_RECIPIENTS = Prepared(
    select(Registration.id, Registration.owner, Registration.url.is_(None))
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


def active_recipients(connection: Connection, *, topic: str) -> list[Recipient]:
    """The id and owner of every active registration of ``topic``, and whether it is
    pull-only, oldest first: what an event's outbox rows need, read on the host's request
    path."""
    return [
        (registration_id, owner, bool(pull_only))
        for registration_id, owner, pull_only in _ACTIVE_RECIPIENTS.rows(
            connection, {"topic": topic}
        )
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
        return [target_from_row(*row) for row in rows]
    query = select(*TARGET_COLUMNS).where(Registration.topic == topic)
    if owner is not None:
        query = query.where(Registration.owner == owner)
    if registration_id is not None:
        query = query.where(Registration.id == registration_id)
    else:
        query = query.where(Registration.state == RegistrationState.ACTIVE)
    return [
        target_from_row(*row) for row in session.execute(query.order_by(Registration.created_at))
    ]


def add_deliveries(
    connection: Connection,
    *,
    recipients: Sequence[Recipient],
    topic: str,
    document_json: str,
    now: datetime,
    trace_parent: str | None = None,
) -> list[str]:
    """Write outbox rows of one event (its JSON, and the ``traceparent`` it was fired under),
    one per recipient, each with its own ``webhook_request_id``, due now (a pull-only
    recipient's stored); their ids. Executemany on ``connection`` (the session's, so they
    commit or roll back with its transaction)."""
    if not recipients:
        return []
    ids = time_ordered_ids(len(recipients))
    _insert_deliveries(
        connection,
        [(delivery_id, *recipient) for delivery_id, recipient in zip(ids, recipients, strict=True)],
        topic=topic,
        document_json=document_json,
        now=now,
        trace_parent=trace_parent,
    )
    return ids


class NewEvent(NamedTuple):
    """An event row written by :func:`add_event`."""

    #: Its id; None when nothing was written (no recipients).
    event_id: str | None
    #: The ids its deliveries will have.
    delivery_ids: list[str]


def add_event(
    connection: Connection,
    *,
    recipients: Sequence[Recipient],
    topic: str,
    document_json: str,
    now: datetime,
    trace_parent: str | None = None,
) -> NewEvent:
    """Write one outbox row for an asynchronous event (with the ``traceparent`` it was fired
    under) and all its recipients, to be fanned out into deliveries by :func:`expand_events`
    once committed, due from ``now`` (see :func:`date_events`). Nothing is written when there
    are no recipients."""
    if not recipients:
        return NewEvent(None, [])
    event_id, *ids = time_ordered_ids(len(recipients) + 1)
    listed: list[list[str | int]] = [
        [delivery_id, registration_id, owner, 1]
        if pull_only
        else [delivery_id, registration_id, owner]
        for delivery_id, (registration_id, owner, pull_only) in zip(ids, recipients, strict=True)
    ]
    _EVENT_INSERT.insert_many(
        connection,
        {
            "topic": topic,
            "document": document_json,
            "created_at": now,
            "trace_parent": trace_parent,
        },
        ("id", "recipients"),
        [(event_id, json.dumps(listed, separators=(",", ":")))],
    )
    return NewEvent(event_id, ids)


_DATE_EVENTS = (
    update(EVENTS)
    .where(EVENTS.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(created_at=bindparam("b_now"))
)


#: The most events one UPDATE dates (well under every driver's limit of parameters).
DATE_BATCH = 1000


def date_events(connection: Connection, event_ids: Sequence[str], *, now: datetime) -> None:
    """Date the events ``event_ids``, written in ``connection``'s transaction, ``now``, as it
    commits: their deliveries are due, and queued, from the commit."""
    for start in range(0, len(event_ids), DATE_BATCH):
        batch = list(event_ids[start : start + DATE_BATCH])
        connection.execute(_DATE_EVENTS, {"b_ids": batch, "b_now": now})


def expand_events(session: Session, *, now: datetime, limit: int = EXPAND_BATCH) -> list[str]:
    """Turn the oldest committed events (up to ``limit``) into their deliveries, made ``now``
    and due from the moment each event was committed, and delete them, in ``session``'s
    transaction; the ids of the deliveries written. Events another transaction is fanning out
    are skipped. (Made now, not when fired: a delivery's creation time follows the order in
    which deliveries come to exist, which registrations' feeds are read in.)"""
    connection = session.connection()
    events = connection.execute(
        select(
            EVENTS.c.id,
            EVENTS.c.topic,
            EVENTS.c.document,
            EVENTS.c.recipients,
            EVENTS.c.created_at,
            EVENTS.c.trace_parent,
        )
        .order_by(EVENTS.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    written: list[str] = []
    for event in events:
        recipients: list[Addressed] = [
            (delivery_id, registration_id, owner, bool(pull_only and pull_only[0]))
            for delivery_id, registration_id, owner, *pull_only in json.loads(event.recipients)
        ]
        _insert_deliveries(
            connection,
            recipients,
            topic=event.topic,
            document_json=event.document,
            now=now,
            due=event.created_at,
            trace_parent=event.trace_parent,
        )
        written += [delivery_id for delivery_id, *_ in recipients]
    if events:
        connection.execute(delete(EVENTS).where(EVENTS.c.id.in_([event.id for event in events])))
    return written


def _insert_deliveries(
    connection: Connection,
    recipients: Sequence[Addressed],
    *,
    topic: str,
    document_json: str,
    now: datetime,
    due: datetime | None = None,
    trace_parent: str | None = None,
) -> None:
    """One executemany of pending deliveries made ``now``, queued and due at ``due`` (default:
    now: an event fanned out later was queued when it was committed), and
    one of the pull-only recipients' deliveries, stored (finished when made, never due), if
    any; each payload is the event's JSON with its ``webhook_request_id``, each with the
    event's ``trace_parent``."""
    shared = {
        "topic": topic,
        "mode": Mode.ASYNC,
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "retry_index": 0,
        "next_attempt_at": now if due is None else due,
        "completed_at": None,
        "created_at": now,
        "updated_at": now,
        "trace_parent": trace_parent,
        "queued_at": now if due is None else due,
    }
    ids = [delivery_id for delivery_id, *_ in recipients]
    rows: dict[bool, list[tuple[str, str, str, str]]] = {False: [], True: []}
    for (delivery_id, registration_id, owner, pull_only), payload in zip(
        recipients, with_request_ids(document_json, ids), strict=True
    ):
        rows[pull_only].append((delivery_id, registration_id, owner, payload))
    keys = ("id", "registration_id", "owner", "payload")
    if rows[False]:
        _OUTBOX_INSERT.insert_many(connection, shared, keys, rows[False])
    if rows[True]:
        stored = {
            **shared,
            "status": DeliveryStatus.STORED,
            "next_attempt_at": None,
            "completed_at": now,
        }
        _OUTBOX_INSERT.insert_many(connection, stored, keys, rows[True])


def time_ordered_ids(count: int) -> list[str]:
    """``count`` new UUIDs (version 7, RFC 9562: a millisecond timestamp, then 74 bits), so
    that new rows land together at the end of the primary key's index rather than all over
    it. Within a process each id sorts after the one made before it, in the same millisecond
    too (the 74 bits start at random each millisecond and count up, RFC 9562's method 2):
    the order in which a process made events and deliveries is the order of their ids."""
    with _ID_LOCK:
        millisecond = time.time_ns() // 1_000_000
        if millisecond > _last_id[0]:
            first = int.from_bytes(os.urandom(10)) >> 7  # 73 random bits: room to count up
        else:  # the same millisecond (or the clock stepped back): count on from the last
            millisecond, first = _last_id[0], _last_id[1] + 1
        _last_id[:] = [millisecond, first + count - 1]
    head = (millisecond << 80) | (7 << 76)
    ids = []
    for sequence in range(first, first + count):
        value = f"{head | ((sequence >> 62) << 64) | (2 << 62) | (sequence & _LOW_62):032x}"
        ids.append(f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}")
    return ids


_ID_LOCK = threading.Lock()
#: The millisecond and the 74-bit sequence of the last id made in this process.
_last_id = [0, 0]
_LOW_62 = (1 << 62) - 1


def _forget_last_id() -> None:
    """A forked child starts afresh: counting on from its parent's last id would make the
    same ids as the parent."""
    global _ID_LOCK
    _ID_LOCK = threading.Lock()
    _last_id[:] = [0, 0]


os.register_at_fork(after_in_child=_forget_last_id)
