"""Publishing an asynchronous event: its payload checked, its outbox rows written on the host's
request path, and their ids handed to the executor once committed."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from ..clock import Clock
from ..errors import WebhooksError
from ..signing import encode_payload
from ..storage import outbox
from ..tracing import current_trace_parent
from .context import DeliveryContext
from .executor import Executor, hand_over_after_commit


def checked_payload(payload: Mapping[str, Any], max_bytes: int) -> tuple[dict[str, Any], str]:
    """The payload as a document and as its JSON, or a :class:`WebhooksError` saying why not."""
    if not isinstance(payload, Mapping):
        raise WebhooksError(f"The payload must be a mapping (a JSON object), not {type(payload)}.")
    if "webhook_request_id" in payload:
        raise WebhooksError(
            "The payload must not contain 'webhook_request_id'; it is set per delivery."
        )
    document = dict(payload)
    try:
        encoded = encode_payload(document)
    except (TypeError, ValueError, RecursionError) as exc:
        raise WebhooksError(f"The payload cannot be sent as JSON: {exc}") from None
    if len(encoded) > max_bytes:
        raise WebhooksError(
            f"The payload is {len(encoded)} bytes of JSON, over KAIZEN_WEBHOOKS_MAX_PAYLOAD_BYTES "
            f"({max_bytes}); send a smaller document (receivers can fetch the rest)."
        )
    return document, encoded.decode()


def enqueue(
    context: DeliveryContext, executor: Executor, topic: str, document_json: str
) -> list[str]:
    """Write the outbox rows of an event (its JSON, checked) for every active registration of
    ``topic``; hand them to ``executor`` once they are committed. The ids of the deliveries
    come back.

    Inside a transaction of the host's session the event is written as one row, which commits
    or rolls back with the host's change, and the executor fans it out into deliveries after
    the commit; otherwise (and always with the embedded database) the deliveries are written
    and committed here. Either way they keep the ``traceparent`` of the current span, if any.
    """
    metrics = context.metrics
    database = context.database
    trace_parent = current_trace_parent()
    session = database.session
    if database.commits_itself(session):
        try:
            connection = session.connection()
            ids = outbox.add_deliveries(
                connection,
                recipients=outbox.active_recipients(connection, topic=topic),
                topic=topic,
                document_json=document_json,
                now=context.clock.now(),
                trace_parent=trace_parent,
            )
            session.commit()
        except BaseException:
            # The transaction is ours: ended, so that the session (the host's, maybe) is usable
            # again. A rollback on a connection the database cut may fail too; it still ends.
            with contextlib.suppress(Exception):
                session.rollback()
            raise
        metrics.enqueued(topic, len(ids))
        executor.submit(ids)
        return ids
    connection = session.connection()
    recipients = outbox.active_recipients(connection, topic=topic)
    now = context.clock.now()
    written = outbox.add_event(
        connection,
        recipients=recipients,
        topic=topic,
        document_json=document_json,
        now=now,
        trace_parent=trace_parent,
    )
    ids = written.delivery_ids
    if written.event_id is not None:
        date_at_commit(session, written.event_id, now, context.clock)
        hand_over_after_commit(
            session, executor, ids, functools.partial(metrics.enqueued, topic, len(ids))
        )
    return ids


#: The events a session's transaction wrote, when each was fired, and the clock to ask.
EVENTS_KEY = "kaizen_webhooks_events"

#: How long a host's transaction may go on after firing an event before the event is dated
#: again as it commits: an UPDATE then costs a few hundredths of the time at most.
DATE_AFTER = timedelta(milliseconds=20)


def date_at_commit(session: Session, event_id: str, fired_at: datetime, clock: Clock) -> None:
    """Date the event ``event_id``, written in ``session``'s transaction at ``fired_at``, when
    the transaction commits, if it went on for over :data:`DATE_AFTER` (all such events
    together, just before): its deliveries are due, and their latency counts, from the
    commit, however long the host's request keeps its transaction open."""
    dated: tuple[list[tuple[str, datetime]], Clock] | None = session.info.get(EVENTS_KEY)
    if dated is None:
        dated = session.info[EVENTS_KEY] = ([], clock)
    dated[0].append((event_id, fired_at))


def _date_events(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: the transaction goes on
    dated: tuple[list[tuple[str, datetime]], Clock] | None = session.info.pop(EVENTS_KEY, None)
    if dated is None:
        return
    events, clock = dated
    now = clock.now()
    late = [event_id for event_id, fired_at in events if now - fired_at > DATE_AFTER]
    if late:
        outbox.date_events(session.connection(), late, now=now)


def _forget_events(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (dated already), rolled back or closed
        session.info.pop(EVENTS_KEY, None)


# Listened to on every session, once (see executor.py).
event.listen(Session, "before_commit", _date_events)
event.listen(Session, "after_transaction_end", _forget_events)
