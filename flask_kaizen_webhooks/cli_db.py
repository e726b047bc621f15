"""``flask webhooks db``: the extension's own schema migrations, on its embedded database or
the host's (with the extension's version table, never the host's ``alembic_version``)."""

from __future__ import annotations

from collections.abc import Callable

import click
from flask.cli import AppGroup
from sqlalchemy import Engine

from .errors import SchemaError
from .state import get_state
from .storage import migrations
from .storage.migrations import HEAD, VERSION_TABLE, Found, OnStep

db_cli = AppGroup(
    "db",
    help=f"The extension's schema migrations (revision kept in {VERSION_TABLE}).",
)


def _where() -> str:
    database = get_state().database
    url = database.engine.url.render_as_string(hide_password=True)
    return url if database.embedded else f"the host's database ({url})"


def _echo_step(before: str | None, after: str | None, doc: str) -> None:
    click.echo(f"  {before or 'base'} -> {after or 'base'}  {doc}")


def _report(where: str, before: Found, after: Found) -> None:
    if before.unversioned:
        click.echo(
            "Found the webhooks tables without a revision (made by create_all): each revision "
            "made only the tables they lacked."
        )
    if after.revision == before.revision:
        click.echo(f"The webhooks tables in {where} are at {after.describe()}: nothing to do.")
    else:
        click.echo(
            f"The webhooks tables in {where} went from {before.describe()} to {after.describe()}."
        )


Migrate = Callable[[Engine, str, OnStep], tuple[Found, Found]]


def _migrate(migrate: Migrate, revision: str) -> None:
    """Run ``migrate`` to ``revision``, saying each step and where it ended."""
    where = _where()
    try:
        before, after = migrate(get_state().database.engine, revision, _echo_step)
    except SchemaError as error:
        raise click.ClickException(str(error)) from None
    _report(where, before, after)


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Upgrade the extension's tables to REVISION (default: head, the newest).

    Tables made without migrations (by an earlier release or by db.create_all()) go through
    every revision, each making only the tables they lack. The embedded database is also
    upgraded on its own, at its first use; the host's database (KaizenWebhooks(app, db=db))
    only by this command.
    """
    _migrate(migrations.upgrade, revision)


@db_cli.command("downgrade")
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Downgrade the extension's tables to REVISION: an older one, before installing an older
    release, or base (none of the tables: their data is lost)."""
    _migrate(migrations.downgrade, revision)


@db_cli.command("current")
def current() -> None:
    """Show the revision of the extension's tables and the newest one (head)."""
    try:
        found = migrations.current(get_state().database.engine)
        state = found.describe()
    except SchemaError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{_where()}: {state}")
    if not found.known:
        click.echo(f"{found.revision} is not a revision of this release (head: {HEAD}).")
    elif found.revision != HEAD:
        automatic = "the app upgrades it on first use, or " if get_state().database.embedded else ""
        click.echo(f"Head is {HEAD}: {automatic}run `flask webhooks db upgrade`.")
