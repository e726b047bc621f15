"""Recording what an app would send, for the host's own tests (see
:meth:`~flask_kaizen_webhooks.KaizenWebhooks.recording`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .delivery.sync import DeliveryResult
from .signing import with_request_ids
from .storage import outbox
from .storage.database import Database
from .storage.rows import Target
from .topics import Mode, Topic


@dataclass(frozen=True, slots=True)
class SentWebhook:
    """A webhook that would have been sent: to which registration, and what."""

    topic: str
    registration_id: str
    owner: str
    #: None for a pull-only registration: its webhook would be stored for its feed, not sent.
    url: str | None
    #: The JSON document the receiver would get (decoded), ``webhook_request_id`` included.
    payload: dict[str, Any]

    @property
    def delivery_id(self) -> str:
        """The delivery's id, the receiver's ``webhook_request_id``."""
        return str(self.payload["webhook_request_id"])


class Recordings:
    """The recordings open for one app. While one is open, every webhook the app fires, from
    any thread, is recorded in each open recording instead of being sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[list[SentWebhook]] = []

    @contextmanager
    def open(self) -> Iterator[list[SentWebhook]]:
        """A list that gets every webhook the app would send until the block ends."""
        sent: list[SentWebhook] = []
        with self._lock:
            self._open.append(sent)
        try:
            yield sent
        finally:
            with self._lock:
                self._open.remove(sent)

    def listening(self) -> list[list[SentWebhook]]:
        """The recordings open now (none: send as usual)."""
        if not self._open:  # the host's every event asks: no lock while nothing records
            return []
        with self._lock:
            return list(self._open)

    def capture(
        self,
        into: Sequence[list[SentWebhook]],
        database: Database,
        topic: Topic,
        document_json: str,
    ) -> list[DeliveryResult] | list[str]:
        """Record the event (its JSON, checked) in each recording of ``into``, as sent to
        every active registration of ``topic`` (stored for a pull-only one's feed), read as
        sending would read them; what :meth:`~flask_kaizen_webhooks.KaizenWebhooks.trigger`
        returns for it (a synchronous topic's results leave pull-only registrations out)."""
        targets = _targets(database, topic)
        ids = outbox.time_ordered_ids(len(targets))
        payloads = with_request_ids(document_json, ids)
        webhooks = [
            SentWebhook(
                topic.name, target.registration_id, target.owner, target.url, json.loads(payload)
            )
            for target, payload in zip(targets, payloads, strict=True)
        ]
        with self._lock:
            for sent in into:
                sent.extend(webhooks)
        if topic.mode is Mode.ASYNC:
            return ids
        return [
            DeliveryResult(delivery_id, target.registration_id, True, None, 0.0, None, None, False)
            for target, delivery_id in zip(targets, ids, strict=True)
            if target.url is not None
        ]


def _targets(database: Database, topic: Topic) -> list[Target]:
    """The topic's active registrations: an asynchronous topic's on the host's own session
    (in its transaction, as its outbox rows would be written), a synchronous one's on a
    session of their own, as a fan-out reads them."""
    if topic.mode is Mode.ASYNC:
        session = database.session
        owned = database.commits_itself(session)
        try:
            return outbox.active_targets(session, topic=topic.name)
        finally:
            if owned:  # the read began the transaction: it ends here, as sending's commit would
                session.rollback()
    with database.independent_session() as session:
        return outbox.active_targets(session, topic=topic.name)
