"""Where the library's log records go when the host has not said: to the console, as Flask does
for ``app.logger``."""

from __future__ import annotations

import logging
from typing import TextIO, cast

from flask.logging import default_handler, wsgi_errors_stream

LOGGER_NAME = "flask_kaizen_webhooks"


class _Unhandled(logging.Filter):
    """Passes a record only while no other handler takes it: the host may set up its logging
    after the extension (a Celery worker does, once it has loaded the app), and its records
    must not then be written twice."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self._handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        return not handled(logger, record.levelno, besides=self._handler)


#: Flask's default handler's stream and format, for the library's records that no handler of
#: the host's takes.
fallback = logging.StreamHandler(cast(TextIO, wsgi_errors_stream))  # the request's, or stderr
fallback.setFormatter(default_handler.formatter)
fallback.addFilter(_Unhandled(fallback))


def show_warnings() -> None:
    """Unless a handler of the host's takes the library's warnings already (on its logger or
    on one its records propagate to), give its logger :data:`fallback`: it writes to stderr in
    Flask's format, as Flask's default handler does, each record that no handler of the host's
    takes, so that a host setting up its logging later still sees each record once."""
    logger = logging.getLogger(LOGGER_NAME)
    if fallback not in logger.handlers and not handled(logger, logging.WARNING):
        logger.addHandler(fallback)


def handled(logger: logging.Logger, level: int, *, besides: logging.Handler | None = None) -> bool:
    """True if a handler other than a :class:`logging.NullHandler` (and ``besides``), on
    ``logger`` or on an ancestor its records propagate to, takes records of ``level``."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(
            handler.level <= level
            and handler is not besides
            and not isinstance(handler, logging.NullHandler)
            for handler in current.handlers
        ):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False
