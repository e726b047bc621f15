"""Operator commands, under ``flask webhooks``."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click
from flask import current_app
from flask.cli import AppGroup

from .dispatch.threads import ThreadDispatcher
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


@webhooks_cli.command("worker")
def worker() -> None:
    """Send asynchronous webhooks from this process until interrupted.

    For deployments whose web processes only write the outbox
    (KAIZEN_WEBHOOKS_DISPATCHER = "none"). Run as many as you like: each delivery is claimed by
    one of them. SIGTERM or Ctrl-C stops taking work, finishes what is in flight and exits.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    dispatcher = (
        state.dispatcher
        if isinstance(state.dispatcher, ThreadDispatcher)
        else ThreadDispatcher(app, state)
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    dispatcher.start()
    click.echo(f"Sending webhooks with {state.settings.workers} workers; Ctrl-C to stop.")
    while not stop.wait(0.5):
        pass
    click.echo("Stopping: finishing the attempts in flight...")
    dispatcher.stop()
    state.transport.close()
    click.echo("Stopped; pending deliveries stay in the outbox.")
