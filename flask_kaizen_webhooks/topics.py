"""The topic registry: every event a host can publish, its delivery mode and a sample payload."""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import WebhooksError


class Mode(enum.StrEnum):
    """How a topic is delivered."""

    #: The host's request waits for every hook, in parallel, under one deadline.
    SYNC = "sync"
    #: Stored durably with the host's change and delivered and retried in the background.
    ASYNC = "async"


@dataclass(frozen=True, slots=True)
class Topic:
    """One event type integrators can register for."""

    name: str
    mode: Mode
    description: str
    sample_payload: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The topic as the ``GET /topics`` endpoint shows it."""
        return {
            "name": self.name,
            "mode": self.mode.value,
            "description": self.description,
            "sample_payload": copy.deepcopy(dict(self.sample_payload)),
        }


_SSO_SAMPLE: dict[str, Any] = {
    "user_id": "user_org_id",
    "sso": {
        "email": "john@doe.com",
        "first_name": "John",
        "last_name": "Doe",
    },
}

BUILTIN_TOPICS: tuple[Topic, ...] = (
    Topic(
        "user_logged_in",
        Mode.SYNC,
        "A user logged in, before they are sent back to the application. Synchronous: the "
        "user waits for every hook, so answer fast. The payload holds the user's id and all the "
        "data collected from the SSO headers.",
        _SSO_SAMPLE,
    ),
    Topic(
        "user_registered",
        Mode.SYNC,
        "A user accessed the application for the first time and their account was set up. "
        "Synchronous, so an integration can fill in the profile and permissions before the "
        "user arrives. The payload holds the user's id and all the SSO header data.",
        _SSO_SAMPLE,
    ),
    Topic(
        "profile_updated",
        Mode.ASYNC,
        "A user profile was created or edited. The payload is the full new profile.",
        {
            "auditLog": [],
            "id": "profile_org_id",
            "email": "john@doe.com",
            "rev": "1-1324",
            "firstName": "John",
            "lastName": "Doe",
            "userFields": [],
        },
    ),
    Topic(
        "booking_updated",
        Mode.ASYNC,
        "A booking was saved, even without changes. The payload is the new booking document.",
        {
            "id": "booking_org_id",
            "rev": "2-9f1c",
            "title": "Clinical skills assessment",
            "state": "requested",
            "userId": "user_org_id",
            "start": "2026-12-01T09:00:00Z",
            "end": "2026-12-01T10:00:00Z",
        },
    ),
    Topic(
        "booking_state_changed",
        Mode.ASYNC,
        "A booking workflow transition was executed, even one that left the state unchanged. "
        "The payload is the new booking document plus the transition and the actions processed.",
        {
            "booking": {
                "id": "booking_org_id",
                "rev": "3-41ab",
                "title": "Clinical skills assessment",
                "state": "approved",
                "userId": "user_org_id",
            },
            "transition": {"name": "approve", "from": "requested", "to": "approved"},
            "actions": ["notify_user"],
        },
    ),
)

_TOPIC_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class TopicRegistry:
    """The topics known to one app: the built-in ones plus any the host adds."""

    def __init__(self, topics: tuple[Topic, ...] = BUILTIN_TOPICS) -> None:
        self._topics: dict[str, Topic] = {}
        for topic in topics:
            self.add(topic)

    def add(self, topic: Topic) -> Topic:
        """Register ``topic``; raise :class:`WebhooksError` if the name is invalid or taken."""
        if not _TOPIC_NAME.match(topic.name):
            raise WebhooksError(
                f"Invalid topic name {topic.name!r}: use 1-64 lowercase letters, digits, '_', "
                "'.' or '-', starting with a letter."
            )
        if topic.name in self._topics:
            raise WebhooksError(f"Topic {topic.name!r} is already registered.")
        self._topics[topic.name] = topic
        return topic

    def get(self, name: str) -> Topic | None:
        """The topic called ``name``, or None."""
        return self._topics.get(name)

    def names(self) -> list[str]:
        """Every topic name, in registration order."""
        return list(self._topics)

    def __contains__(self, name: object) -> bool:
        return name in self._topics

    def __iter__(self) -> Iterator[Topic]:
        return iter(self._topics.values())

    def __len__(self) -> int:
        return len(self._topics)
