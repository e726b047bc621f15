"""When the background engine starts: as soon as a process serves the app, so that work left
pending by a process that stopped (or died) goes out within seconds, with no request needed;
never on its own in tests or in CLI commands other than ``flask run``.

``KAIZEN_WEBHOOKS_AUTOSTART`` decides: ``None`` (the default) tells from the process (see
:func:`start_at`), ``True`` always starts, ``False`` starts on first use only (a request or a
delivery submitted).

A server that loads the app once and then forks its workers (gunicorn with ``--preload``, uWSGI
without ``lazy-apps``) must not start threads before the fork: each forked worker starts an
engine of its own instead.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from flask import Flask
from flask.cli import run_command
from flask.helpers import get_debug_flag


class StartAt(enum.StrEnum):
    """When the engine of a new app starts."""

    #: At once (the process serves the app).
    NOW = "now"
    #: In each worker forked from this process (a pre-forking server's master).
    FORK = "fork"
    #: On first use: a request, or a delivery submitted (tests, other CLI commands).
    FIRST_USE = "first use"


def start_at(app: Flask, autostart: bool | None) -> StartAt:
    """When ``app``'s engine starts in this process."""
    if autostart is False:
        return StartAt.FIRST_USE
    if autostart is None and (app.testing or "PYTEST_CURRENT_TEST" in os.environ or not _serving()):
        return StartAt.FIRST_USE
    return StartAt.FORK if _forking_master() else StartAt.NOW


def _serving() -> bool:
    """True when this process serves the app: ``flask run`` (in the reloader's child, not its
    file watcher), the reloader's child of ``app.run(debug=True)``, gunicorn, uWSGI, mod_wsgi or
    waitress. False elsewhere: other commands (``flask shell``, ``flask db upgrade``, ``flask
    webhooks ...``, a Celery worker), scripts, migrations, plain ``app.run()`` (which starts on
    its first request, or call ``webhooks.start(app)`` first)."""
    context = click.get_current_context(silent=True)
    if context is not None:
        if context.command is not run_command:
            return False
        reload = context.params.get("reload")
        if reload is None:
            reload = get_debug_flag()
        return not reload or os.environ.get("WERKZEUG_RUN_MAIN") == "true"
    return (
        os.environ.get("WERKZEUG_RUN_MAIN") == "true"
        or os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/")
        or any(name in sys.modules for name in ("uwsgi", "mod_wsgi", "waitress.server"))
    )


def _forking_master() -> bool:
    """True in the master of a server that forks its workers after loading the app."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        return bool(getattr(uwsgi, "worker_id", lambda: 1)() == 0)
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        # gunicorn loads the app in its master with --preload, and in each worker otherwise.
        frame = sys._getframe()
        while frame is not None:
            code = frame.f_code
            if code.co_name == "init_process" and "gunicorn" in code.co_filename:
                return False  # in a worker
            frame = frame.f_back  # type: ignore[assignment]
        return True
    return False


def on_fork(callback: Callable[[], None]) -> None:
    """Run ``callback`` in every child this process forks; under uWSGI (which forks its
    workers without Python's fork hooks unless told to) also through its post-fork hook,
    chained to any hook set before."""
    os.register_at_fork(after_in_child=callback)
    uwsgi: Any = sys.modules.get("uwsgi")
    if uwsgi is None:
        return
    decorators = sys.modules.get("uwsgidecorators")
    if decorators is not None:  # the host uses them: join their chain rather than replace it
        decorators.postfork(callback)
        return
    previous = getattr(uwsgi, "post_fork_hook", None)

    def post_fork_hook() -> None:
        if previous is not None:
            previous()
        callback()

    uwsgi.post_fork_hook = post_fork_hook
