"""Where the library's log records go when the host has not said: to the console, as Flask does
for ``app.logger``."""

from __future__ import annotations

import logging

from flask.logging import default_handler

LOGGER_NAME = "flask_kaizen_webhooks"


def show_warnings() -> None:
    """Give the library's logger Flask's default handler (stderr, in Flask's format) unless a
    handler of the host's, on it or on a logger its records propagate to, takes its warnings."""
    logger = logging.getLogger(LOGGER_NAME)
    if not handled(logger, logging.WARNING):
        logger.addHandler(default_handler)


def handled(logger: logging.Logger, level: int) -> bool:
    """True if a handler other than a :class:`logging.NullHandler`, on ``logger`` or on an
    ancestor its records propagate to, takes records of ``level``."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(
            handler.level <= level and not isinstance(handler, logging.NullHandler)
            for handler in current.handlers
        ):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False
