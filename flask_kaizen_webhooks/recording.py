"""Recording what an app would send, for the host's own tests (see
:meth:`~flask_kaizen_webhooks.KaizenWebhooks.recording`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .delivery.sync import DeliveryResult
from .storage import outbox
from .storage.database import Database
from .topics import Mode, Topic


@dataclass(frozen=True, slots=True)
class SentWebhook:
    """A webhook that would have been sent: to which registration, and what."""

    topic: str
    registration_id: str
    owner: str
    url: str
    #: The JSON document the receiver would get, ``webhook_request_id`` included.
    payload: dict[str, Any]

    @property
    def delivery_id(self) -> str:
        """The delivery's id, the receiver's ``webhook_request_id``."""
        return str(self.payload["webhook_request_id"])


class Recordings:
    """The recordings open for one app; while one is, the app sends nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[list[SentWebhook]] = []

    def __bool__(self) -> bool:
        return bool(self._open)

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

    def capture(
        self, database: Database, topic: Topic, document: dict[str, Any]
    ) -> list[DeliveryResult] | list[str]:
        """Record ``document`` as sent to every active registration of ``topic``; what
        :meth:`~flask_kaizen_webhooks.KaizenWebhooks.trigger` returns for it."""
        with database.independent_session() as session:
            targets = outbox.active_targets(session, topic=topic.name)
        ids = outbox.time_ordered_ids(len(targets))
        webhooks = [
            SentWebhook(
                topic.name,
                target.registration_id,
                target.owner,
                target.url,
                {**document, "webhook_request_id": delivery_id},
            )
            for target, delivery_id in zip(targets, ids, strict=True)
        ]
        with self._lock:
            for sent in self._open:
                sent.extend(webhooks)
        if topic.mode is Mode.ASYNC:
            return ids
        return [
            DeliveryResult(delivery_id, target.registration_id, True, None, 0.0, None, None, False)
            for target, delivery_id in zip(targets, ids, strict=True)
        ]
