"""The extension's tables, where hosts' migration scripts have long imported them from
(``from flask_kaizen_webhooks.models import metadata``); they are defined in
:mod:`flask_kaizen_webhooks.storage.tables`."""

from .storage.tables import (
    Attempt,
    CallCount,
    Delivery,
    DeliveryStatus,
    Event,
    Registration,
    RegistrationState,
    metadata,
)

__all__ = [
    "Attempt",
    "CallCount",
    "Delivery",
    "DeliveryStatus",
    "Event",
    "Registration",
    "RegistrationState",
    "metadata",
]
