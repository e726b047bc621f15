"""The library's warnings reach the console of a stock Flask app, once, as app.logger's do."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

#: A stock Flask app: no logging set up unless the test says so. It starts the extension (which
#: warns that KAIZEN_WEBHOOKS_SECRET_KEYS is not set), then sends a webhook the guard refuses.
APP = """
import logging
{setup}
from flask import Flask
from flask_kaizen_webhooks import KaizenWebhooks, get_state
from flask_kaizen_webhooks.storage import registrations

app = Flask("stock", instance_path={instance!r})
app.config.update(SECRET_KEY="k", KAIZEN_WEBHOOKS_DATABASE_URI={database!r},
                  KAIZEN_WEBHOOKS_DISPATCHER="none")
webhooks = KaizenWebhooks(app)
{later}
with app.app_context():
    state = get_state()
    registrations.create_registration(state.database.session, owner="o", topic="user_logged_in",
                              url="https://127.0.0.1/hook",
                              sealed_secret=state.secrets.seal("signature_secret_0123"))
    state.database.session.commit()
    [result] = webhooks.trigger("user_logged_in", {{"user_id": "u"}})
    assert not result.ok
"""
SECRET_KEYS_WARNING = "KAIZEN_WEBHOOKS_SECRET_KEYS is not set"
REFUSAL_WARNING = "Webhook to 127.0.0.1 refused before connecting: 127.0.0.1 is a loopback"


def run_app(tmp_path: Path, setup: str = "", later: str = "") -> str:
    """The stderr of the app run in a fresh interpreter, with logging set up by ``setup`` before
    the extension and by ``later`` after it."""
    source = APP.format(
        setup=setup,
        later=later,
        instance=str(tmp_path / "instance"),
        database=f"sqlite:///{tmp_path / 'app.sqlite3'}",
    )
    finished = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stderr


def test_a_stock_app_shows_the_warnings_once_on_stderr(tmp_path: Path) -> None:
    stderr = run_app(tmp_path)
    assert stderr.count(SECRET_KEYS_WARNING) == 1, stderr
    assert stderr.count(REFUSAL_WARNING) == 1, stderr
    # In Flask's format, as app.logger's warnings are.
    assert f"WARNING in sealing: {SECRET_KEYS_WARNING}" in stderr


@pytest.mark.parametrize(
    "setup",
    [
        "logging.basicConfig()",
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(levelname)s %(message)s')",
    ],
)
def test_a_host_that_configures_logging_sees_each_warning_once(tmp_path: Path, setup: str) -> None:
    stderr = run_app(tmp_path, setup)
    assert stderr.count(SECRET_KEYS_WARNING) == 1, stderr
    assert stderr.count(REFUSAL_WARNING) == 1, stderr
    assert "WARNING in sealing" not in stderr  # the host's own handler wrote it


def test_a_host_that_sets_up_logging_after_the_extension_sees_each_warning_once(
    tmp_path: Path,
) -> None:
    # As in a Celery worker, which sets up logging once it has loaded the app: from then on,
    # the host's handler writes the library's records, and they are not written twice.
    later = "logging.basicConfig(format='host: %(name)s %(levelname)s %(message)s')"
    stderr = run_app(tmp_path, later=later)
    assert stderr.count(SECRET_KEYS_WARNING) == 1, stderr
    assert f"WARNING in sealing: {SECRET_KEYS_WARNING}" in stderr  # before the host's set-up
    assert stderr.count(REFUSAL_WARNING) == 1, stderr
    assert f"host: flask_kaizen_webhooks WARNING {REFUSAL_WARNING}" in stderr


def test_a_host_that_silences_the_library_is_not_overruled(tmp_path: Path) -> None:
    stderr = run_app(tmp_path, "logging.getLogger('flask_kaizen_webhooks').setLevel('ERROR')")
    assert SECRET_KEYS_WARNING not in stderr and REFUSAL_WARNING not in stderr, stderr


def test_only_a_real_handler_that_takes_warnings_counts() -> None:
    from flask_kaizen_webhooks.logs import handled

    root = logging.Logger("root")
    parent = logging.Logger("parent")
    parent.parent = root
    child = logging.Logger("child")
    child.parent = parent
    child.addHandler(logging.NullHandler())
    assert not handled(child, logging.WARNING)
    root.addHandler(logging.StreamHandler(io.StringIO()))
    assert handled(child, logging.WARNING)
    parent.propagate = False  # the root's handler no longer sees the child's records
    assert not handled(child, logging.WARNING)
    quiet = logging.StreamHandler(io.StringIO())
    quiet.setLevel(logging.ERROR)
    parent.addHandler(quiet)
    assert not handled(child, logging.WARNING) and handled(child, logging.ERROR)
    assert not handled(child, logging.ERROR, besides=quiet)
