"""Publishing an asynchronous event: its payload checked, its outbox rows written on the host's
request path, and their ids handed to the executor once committed."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import Any

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
    ids = outbox.add_event(
        connection,
        recipients=recipients,
        topic=topic,
        document_json=document_json,
        now=now,
        trace_parent=trace_parent,
    )
    if ids:
        hand_over_after_commit(
            session, executor, ids, functools.partial(metrics.enqueued, topic, len(ids))
        )
    return ids
