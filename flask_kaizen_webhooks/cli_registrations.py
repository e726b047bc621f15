"""Operator commands on one registration: ``flask webhooks enable``, ``disable`` and
``options``."""

from __future__ import annotations

from typing import Any

import click
from flask.cli import with_appcontext

from .errors import NotFound, ValidationError
from .metrics import DisabledReason
from .state import get_state
from .storage import registrations
from .storage.tables import Registration, RegistrationState
from .web.validation import ORDERINGS, parse_options


def _set_state(registration_id: str, new_state: str) -> None:
    state = get_state()
    with state.database.writing() as session:
        try:
            registration, changed = registrations.set_registration_state(
                session,
                registration_id,
                state=new_state,
                now=state.clock.now(),
                reason="disabled by an operator",
            )
        except NotFound:
            raise click.ClickException(f"No registration with id {registration_id}.") from None
        rev = registration.rev
    if changed and new_state == RegistrationState.DISABLED:
        state.context.metrics.disabled(DisabledReason.OPERATOR)
    click.echo(f"Registration {registration_id} is {new_state} (rev {rev}).")


@click.command("enable")
@click.argument("registration_id")
@with_appcontext
def enable(registration_id: str) -> None:
    """Enable a registration again (its failure count starts afresh)."""
    _set_state(registration_id, RegistrationState.ACTIVE)


@click.command("disable")
@click.argument("registration_id")
@with_appcontext
def disable(registration_id: str) -> None:
    """Stop delivering to a registration."""
    _set_state(registration_id, RegistrationState.DISABLED)


@click.command("options")
@click.argument("registration_id")
@click.option("--ordering", type=click.Choice(ORDERINGS), help="fifo: one at a time, in order.")
@click.option(
    "--max-per-second",
    metavar="N|none",
    help="The most attempts that start in any second; none: no limit of its own.",
)
@with_appcontext
def options(registration_id: str, ordering: str | None, max_per_second: str | None) -> None:
    """Show a registration's delivery options, or change them."""
    given: dict[str, Any] = {}
    if ordering is not None:
        given["ordering"] = ordering
    if max_per_second is not None:
        try:
            given["max_per_second"] = (
                None if max_per_second.lower() == "none" else int(max_per_second)
            )
        except ValueError:
            raise click.BadParameter(
                "a whole number, or none", param_hint="--max-per-second"
            ) from None
    try:
        checked = parse_options(given)
    except ValidationError as exc:
        raise click.ClickException(exc.message) from None
    state = get_state()
    with state.database.writing() as session:
        try:
            registration = registrations.set_options(
                session, registration_id, checked, now=state.clock.now()
            )
        except NotFound:
            raise click.ClickException(f"No registration with id {registration_id}.") from None
        click.echo(_describe(registration))


def _describe(registration: Registration) -> str:
    rate = registration.max_per_second
    return (
        f"Registration {registration.id} (rev {registration.rev}): ordering "
        f"{registration.ordering}, max_per_second {'none' if rate is None else rate}."
    )
