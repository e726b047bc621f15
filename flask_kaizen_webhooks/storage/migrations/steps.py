"""Alembic run on a connection the caller holds, inside its transaction and lock: stamp,
upgrade and downgrade the extension's schema with its own version table.

The extension imports this module (from :mod:`.apply`) only when a schema has to change:
Alembic takes some 70 ms to import, which a process starting on an up-to-date database does
not pay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationInfo
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from ...errors import SchemaError
from .names import OnStep

#: The folder of ``env.py`` and ``versions/``.
SCRIPTS = Path(__file__).resolve().parent

#: Alembic keeps the migration it runs in module globals (``alembic.context``, ``alembic.op``):
#: one run at a time in a process, whatever the databases.
_ONE_AT_A_TIME = threading.Lock()


def _config(connection: Connection | None = None, on_step: OnStep | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    config.attributes["on_version_apply"] = None if on_step is None else _reporter(on_step)
    return config


def _reporter(on_step: OnStep) -> Callable[..., None]:
    def report(*, step: MigrationInfo, **_kwargs: object) -> None:
        upper, lower = step.up_revision_id, ",".join(step.down_revision_ids) or None
        doc = str(getattr(step.up_revision, "doc", "") or "")
        if step.is_upgrade:
            on_step(lower, upper, doc)
        else:
            on_step(upper, lower, doc)

    return report


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str | None:
    """The newest revision of the revision files."""
    return _scripts().get_current_head()


def revisions() -> list[str]:
    """Every revision, oldest first."""
    return [script.revision for script in reversed(list(_scripts().walk_revisions()))]


@contextmanager
def _said_plainly() -> Iterator[None]:
    """One run at a time; Alembic's refusals (an unknown revision, say) and a schema that is
    not what its revision says as :class:`SchemaError`."""
    try:
        with _ONE_AT_A_TIME:
            yield
    except CommandError as error:
        raise SchemaError(str(error)) from error
    except DBAPIError as error:
        raise SchemaError(
            "The webhooks tables are not what their revision says, so the migration stopped "
            f"(nothing was changed): {error.orig}"
        ) from error


def stamp(connection: Connection, revision: str) -> None:
    """Record ``revision`` as the schema's without running anything."""
    with _said_plainly():
        command.stamp(_config(connection), revision)


def upgrade(connection: Connection, revision: str, on_step: OnStep | None = None) -> None:
    """Run the upgrades up to ``revision``."""
    with _said_plainly():
        command.upgrade(_config(connection, on_step), revision)


def downgrade(connection: Connection, revision: str, on_step: OnStep | None = None) -> None:
    """Run the downgrades down to ``revision``."""
    with _said_plainly():
        command.downgrade(_config(connection, on_step), revision)
