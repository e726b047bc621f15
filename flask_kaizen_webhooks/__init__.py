"""First-class outgoing webhooks for Flask applications."""

import logging

from . import signals
from .delivery.sync import DeliveryResult
from .errors import (
    ApiError,
    ConfigurationError,
    DeliveryFailed,
    DuplicateRegistration,
    MetricsUnavailable,
    NotFound,
    RevConflict,
    UnknownTopic,
    ValidationError,
    WebhooksError,
)
from .extension import KaizenWebhooks
from .portal import PortalLink
from .state import WebhooksState, get_state
from .topics import Mode, Topic
from .version import __version__

logging.getLogger("flask_kaizen_webhooks").addHandler(logging.NullHandler())

__all__ = [
    "ApiError",
    "ConfigurationError",
    "DeliveryFailed",
    "DeliveryResult",
    "DuplicateRegistration",
    "KaizenWebhooks",
    "MetricsUnavailable",
    "Mode",
    "NotFound",
    "PortalLink",
    "RevConflict",
    "Topic",
    "UnknownTopic",
    "ValidationError",
    "WebhooksError",
    "WebhooksState",
    "__version__",
    "get_state",
    "signals",
]
