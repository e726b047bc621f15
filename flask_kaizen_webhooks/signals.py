"""Blinker signals: one per topic for the host to send, and lifecycle signals to listen to.

The host sends a topic's signal with the app as sender and the payload document as ``payload``:

.. code-block:: python

    from flask import current_app
    from flask_kaizen_webhooks import signals

    signals.profile_updated.send(current_app, payload=profile)

``send`` returns blinker's list of ``(receiver, value)`` pairs; the extension's value is what
:meth:`KaizenWebhooks.trigger` returns (the results of a synchronous topic, the ids of the queued
deliveries of an asynchronous one). :func:`topic_signal` gives the signal of any topic by name,
including the host's own topics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from blinker import NamedSignal, Namespace
from flask import Flask
from werkzeug.local import LocalProxy

from .errors import WebhooksError

_signals = Namespace()
_topic_signals: dict[str, TopicSignal] = {}
_topic_signals_lock = threading.Lock()


class TopicSignal(NamedSignal):
    """A topic's signal. Sending it with anything but an app that runs the extension (or
    ``current_app``, which stands for one) is an error rather than a webhook silently never
    sent."""

    def send(
        self,
        sender: Any = None,
        /,
        *,
        _async_wrapper: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Callable[..., Any], Any]]:
        topic = self.name
        sender = _unwrapped(sender, topic)
        if not isinstance(sender, Flask):
            raise WebhooksError(
                f"Send the {topic!r} signal with the app as sender: "
                f"signals.{topic}.send(current_app, payload=...)."
            )
        if "kaizen_webhooks" not in sender.extensions:
            raise WebhooksError(
                f"The {topic!r} signal was sent by an app without flask-kaizen-webhooks."
            )
        if "payload" not in kwargs:
            raise WebhooksError(f"Send the {topic!r} signal with payload=<the document>.")
        return super().send(sender, _async_wrapper=_async_wrapper, **kwargs)


def _unwrapped(sender: Any, topic: str) -> Any:
    """The object behind ``current_app`` (blinker finds receivers by the sender's identity,
    which a proxy does not share); any other sender as it is."""
    if not isinstance(sender, LocalProxy):
        return sender
    try:
        return sender._get_current_object()
    except RuntimeError:
        raise WebhooksError(
            f"The {topic!r} signal was sent with current_app outside an application context."
        ) from None


def topic_signal(name: str) -> TopicSignal:
    """The signal of the topic called ``name``."""
    with _topic_signals_lock:
        signal = _topic_signals.get(name)
        if signal is None:
            signal = _topic_signals[name] = TopicSignal(name, doc=f"Send the {name} webhook.")
        return signal


#: The built-in topics' signals.
user_logged_in = topic_signal("user_logged_in")
user_registered = topic_signal("user_registered")
profile_updated = topic_signal("profile_updated")
booking_updated = topic_signal("booking_updated")
booking_state_changed = topic_signal("booking_state_changed")

#: Sent (app as sender) when a delivery got a 2xx; keywords ``delivery_id``,
#: ``registration_id``, ``topic``, ``status_code``, ``attempts``.
delivery_succeeded = _signals.signal(
    "delivery-succeeded", doc="A webhook delivery was answered with a 2xx."
)
#: Sent when a delivery failed for good (no retry is left, or the receiver answered 410);
#: keywords ``delivery_id``, ``registration_id``, ``topic``, ``error``, ``attempts``.
delivery_failed = _signals.signal(
    "delivery-failed", doc="A webhook delivery failed for good and will not be retried."
)
#: Sent when a registration was disabled; keywords ``registration_id``, ``reason``.
registration_disabled = _signals.signal(
    "registration-disabled", doc="A webhook registration was disabled (410 Gone or failures)."
)

__all__ = [
    "booking_state_changed",
    "booking_updated",
    "delivery_failed",
    "delivery_succeeded",
    "profile_updated",
    "registration_disabled",
    "topic_signal",
    "user_logged_in",
    "user_registered",
]
