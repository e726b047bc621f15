"""First-class outgoing webhooks for Flask applications."""

import logging

from .errors import (
    ApiError,
    ConfigurationError,
    DuplicateRegistration,
    NotFound,
    RevConflict,
    ValidationError,
    WebhooksError,
)
from .extension import KaizenWebhooks, WebhooksState, get_state
from .topics import Mode, Topic
from .version import __version__

logging.getLogger("flask_kaizen_webhooks").addHandler(logging.NullHandler())

__all__ = [
    "ApiError",
    "ConfigurationError",
    "DuplicateRegistration",
    "KaizenWebhooks",
    "Mode",
    "NotFound",
    "RevConflict",
    "Topic",
    "ValidationError",
    "WebhooksError",
    "WebhooksState",
    "__version__",
    "get_state",
]
