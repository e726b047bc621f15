"""Operator commands, under ``flask webhooks``."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .extension import get_state

webhooks_cli = AppGroup("webhooks", help="Manage flask-kaizen-webhooks.")


@webhooks_cli.command("init-db")
@click.option("--drop", is_flag=True, help="Drop the extension's tables first (loses all data).")
def init_db(drop: bool) -> None:
    """Create the extension's tables in its database."""
    database = get_state().database
    if drop:
        database.drop_tables()
        click.echo("Dropped the webhooks tables.")
    database.create_tables()
    where = "the host's database" if not database.embedded else str(database.engine.url)
    click.echo(f"The webhooks tables are ready in {where}.")
