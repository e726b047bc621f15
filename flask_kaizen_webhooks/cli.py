"""Operator commands, under ``flask webhooks``."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import FrameType

import click
from flask import current_app
from flask.cli import AppGroup

from .cli_db import db_cli
from .cli_registrations import disable, enable, options
from .clock import as_utc, isoformat
from .config import MAX_LINK_SECONDS
from .delivery.engine import ThreadExecutor
from .errors import ApiError, MetricsUnavailable, NotFound, WebhooksError, unknown_topic_message
from .portal.links import make_link
from .state import get_state
from .storage import admin, claims, outbox, registrations
from .storage.holders import Holder, this_process
from .storage.tables import Delivery, DeliveryStatus, RegistrationState
from .web import actions
from .web.metrics import serve as serve_metrics
from .web.validation import parse_recover

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

webhooks_cli = AppGroup("webhooks", help="Manage flask-kaizen-webhooks.")
for command in (db_cli, enable, disable, options):
    webhooks_cli.add_command(command)


@webhooks_cli.command("init-db")
@click.option("--drop", is_flag=True, help="Drop the extension's tables first (loses all data).")
def init_db(drop: bool) -> None:
    """Make the extension's tables ready in its database: the embedded database is brought to
    the newest revision; the host's gets the tables it lacks (see `db upgrade`)."""
    database = get_state().database
    if drop:
        database.drop_tables()
        click.echo("Dropped the webhooks tables.")
    database.create_tables()
    where = "the host's database" if not database.embedded else str(database.engine.url)
    click.echo(f"The webhooks tables are ready in {where}.")


@webhooks_cli.command("worker")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port; needs the "
    "[metrics] extra).",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics bind to."
)
def worker(metrics_port: int | None, metrics_host: str) -> None:
    """Send asynchronous webhooks from this process until interrupted.

    For deployments whose web processes only write the outbox
    (KAIZEN_WEBHOOKS_EXECUTOR = "none"). Run as many as you like: each delivery is claimed by
    one of them. SIGTERM or Ctrl-C stops taking work, finishes what is in flight and exits.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    metrics_server = None
    if metrics_port is not None:
        try:
            metrics_server = serve_metrics(app, metrics_port, metrics_host)
        except (MetricsUnavailable, OSError) as exc:
            raise click.ClickException(f"Cannot serve metrics: {exc}") from None
        click.echo(f"Metrics at http://{metrics_host}:{metrics_server.server_port}/metrics")
    executor = (
        state.executor
        if isinstance(state.executor, ThreadExecutor)
        else ThreadExecutor(app, state.context, state.client)
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    executor.start()
    click.echo(f"Sending webhooks, up to {state.settings.workers} at once; Ctrl-C to stop.")
    while not stop.wait(0.5):
        pass
    click.echo("Stopping: finishing the attempts in flight...")
    executor.stop()
    state.client.close()
    if metrics_server is not None:
        metrics_server.shutdown()
    click.echo("Stopped; pending deliveries stay in the outbox.")


# Looking ------------------------------------------------------------------------------------------


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` with the noun in the singular or the plural: "1 delivery", "2 deliveries"."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def parse_moment(value: str | None, now: datetime) -> datetime | None:
    """An ISO 8601 time, or a duration back from ``now`` such as ``30m``, ``2h`` or ``7d``."""
    if value is None:
        return None
    match = DURATION.match(value.strip())
    if match:
        return now - timedelta(seconds=float(match[1]) * UNITS[match[2]])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an ISO time nor a duration like 30m, 2h or 7d."
        ) from None
    return as_utc(moment)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Rows under headers, in aligned columns."""
    cells = [[str("" if cell is None else cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@webhooks_cli.command("list")
@click.option("--topic", help="Only this topic.")
@click.option("--owner", help="Only this owner's registrations.")
@click.option("--state", type=click.Choice([state.value for state in RegistrationState]))
def list_registrations(topic: str | None, owner: str | None, state: str | None) -> None:
    """List registrations of every owner (never their secrets); a pull-only one's URL is
    "pull-only (feed)"."""
    with get_state().database.independent_session() as session:
        rows = admin.find_registrations(session, topic=topic, owner=owner, state=state)
        retrying = admin.retrying_counts(session, topic=topic, owner=owner, state=state)
    print_table(
        ["ID", "OWNER", "TOPIC", "STATE", "URL", "RETRYING", "FAILED FOR GOOD IN A ROW", "CREATED"],
        [
            (
                r.id,
                r.owner,
                r.topic,
                r.state,
                r.url or "pull-only (feed)",
                retrying.get(r.id, 0),
                r.consecutive_failures,
                isoformat(r.created_at),
            )
            for r in rows
        ],
    )
    click.echo(counted(len(rows), "registration"))


@webhooks_cli.command("deliveries")
@click.option(
    "--status",
    type=click.Choice([status.value for status in DeliveryStatus]),
)
@click.option("--registration", "registration_id", help="Only this registration's.")
@click.option("--since", help="Created since: an ISO time, or a duration back like 2h or 7d.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
def list_deliveries(
    status: str | None, registration_id: str | None, since: str | None, limit: int
) -> None:
    """List deliveries, newest first."""
    state = get_state()
    with state.database.independent_session() as session:
        rows = admin.find_deliveries(
            session,
            status=status,
            registration_id=registration_id,
            since=parse_moment(since, state.clock.now()),
            limit=limit,
        )
    now = state.clock.now()
    print_table(
        ["ID", "TOPIC", "MODE", "STATUS", "ATTEMPTS", "LAST", "ERROR", "CREATED", "NEXT", "CLAIM"],
        [
            (
                d.id,
                d.topic,
                d.mode,
                d.status,
                d.attempts,
                d.last_status_code,
                d.last_error,
                isoformat(d.created_at),
                ""
                if d.status != DeliveryStatus.PENDING or d.claim_token
                else (isoformat(d.next_attempt_at)),
                claim_of(d, now),
            )
            for d in rows
        ],
    )
    click.echo(counted(len(rows), "delivery", "deliveries"))


def claim_of(delivery: Delivery, now: datetime) -> str:
    """Who holds ``delivery``'s claim and until when, for a pending delivery being sent."""
    if delivery.status != DeliveryStatus.PENDING or not delivery.claim_token:
        return ""
    until = as_utc(delivery.next_attempt_at) if delivery.next_attempt_at else None
    holder = Holder.of(delivery.claim_token)
    by = "" if holder is None else f" by process {holder.pid}"
    if holder is not None and holder.machine != this_process().machine:
        by += " of another machine"
    if until is None or until <= now:
        return f"lapsed{by} at {isoformat(until)}: due"
    return f"held{by} until {isoformat(until)}"


@webhooks_cli.command("stats")
def stats() -> None:
    """Deliveries per topic and status (tests apart; stored: of pull-only registrations, if
    any), and the age of the oldest pending one."""
    state = get_state()
    with state.database.independent_session() as session:
        found = admin.delivery_stats(session, now=state.clock.now())
    statuses = [DeliveryStatus.PENDING, DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED]
    if any(status == DeliveryStatus.STORED for _, status in found.counts):
        statuses.append(DeliveryStatus.STORED)
    topics = sorted({topic for topic, _ in found.counts})
    print_table(
        ["TOPIC", *[s.upper() for s in statuses]],
        [(topic, *[found.counts.get((topic, s), 0) for s in statuses]) for topic in topics],
    )
    if found.tests:
        click.echo(f"test deliveries: {found.tests} ({found.tests_failed} failed)")
    if found.events_waiting:
        click.echo(f"events waiting to be fanned out into deliveries: {found.events_waiting}")
    if found.claimed:
        click.echo(
            f"being sent (claimed): {counted(found.claimed, 'delivery', 'deliveries')}, "
            f"the last claim held until {isoformat(found.claimed_until)}"
        )
    if found.waiting_turn:
        click.echo(f"waiting their turn (FIFO registrations): {found.waiting_turn}")
    if found.oldest_pending is None:
        click.echo("oldest pending: none")
    else:
        age = (state.clock.now() - found.oldest_pending).total_seconds()
        click.echo(f"oldest pending: {age:.0f} s ({isoformat(found.oldest_pending)})")


# Acting -------------------------------------------------------------------------------------------


@webhooks_cli.command("redeliver")
@click.argument("delivery_id", required=False)
@click.option("--failed", is_flag=True, help="Every failed delivery that matches the filters.")
@click.option("--registration", "registration_id", help="With --failed: of this registration.")
@click.option("--since", help="With --failed: created since (ISO time or duration like 2h).")
@click.option("--until", help="With --failed: created before (ISO time or duration).")
def redeliver(
    delivery_id: str | None,
    failed: bool,
    registration_id: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Send one delivery again, or (--failed) all failed ones of a registration or time range.

    Deliveries whose registration was deleted, is disabled or is pull-only are left alone, and
    so is one with an attempt under way; the command says how many and why.
    """
    if bool(delivery_id) == failed:
        raise click.UsageError("Give either a DELIVERY_ID or --failed (with filters).")
    state = get_state()
    now = state.clock.now()
    with state.database.writing() as session:
        if delivery_id:
            found = session.get(Delivery, delivery_id)
            if found is None:
                raise click.ClickException(f"No delivery with id {delivery_id}.")
            chosen: Sequence[Delivery] = [found]
        else:
            chosen = admin.find_deliveries(
                session,
                status=DeliveryStatus.FAILED,
                registration_id=registration_id,
                since=parse_moment(since, now),
                until=parse_moment(until, now),
                limit=None,
            )
        requeued = claims.queue_again(session, [delivery.id for delivery in chosen], now=now)
    # The running executors (web processes or workers) pick them up at their next poll.
    click.echo(f"Queued {counted(len(requeued.queued), 'delivery', 'deliveries')} again.")
    for left, one, many in (
        (requeued.in_flight, "an attempt of it is under way", "an attempt of each is under way"),
        (
            requeued.registration_deleted,
            "its registration was deleted",
            "their registration was deleted",
        ),
        (
            requeued.registration_disabled,
            "its registration is disabled; enable it first",
            "their registration is disabled; enable it first",
        ),
        (
            requeued.pull_only,
            "its registration is pull-only, never pushed to",
            "their registration is pull-only, never pushed to",
        ),
    ):
        if left:
            click.echo(f"Left {len(left)} alone: {one if len(left) == 1 else many}.", err=True)


@webhooks_cli.command("recover")
@click.argument("registration_id")
@click.option("--since", required=True, help="Created since: an ISO time or a duration back (6h).")
@click.option("--until", help="Created before: an ISO time or a duration back; default now.")
@click.option(
    "--all", "everything", is_flag=True, help="Succeeded deliveries too, not only failed."
)
def recover(registration_id: str, since: str, until: str | None, everything: bool) -> None:
    """Queue again a registration's failed deliveries (--all: succeeded ones too) created in a
    time window, with their ids, after its receiver was down or lost them."""
    state = get_state()
    now = state.clock.now()
    kept = timedelta(days=state.settings.retention_days)
    try:
        window = parse_recover(
            {
                "since": isoformat(parse_moment(since, now)),
                "until": isoformat(parse_moment(until, now)),
                "status": "all" if everything else "failed",
            },
            now=now,
            kept=kept,
        )
        queued = actions.recover(
            state,
            None,
            registration_id,
            since=window.since,
            until=window.until,
            statuses=window.statuses,
        )
    except NotFound:
        raise click.ClickException(f"No registration with id {registration_id}.") from None
    except ApiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Queued {counted(queued, 'delivery', 'deliveries')} again.")


@webhooks_cli.command("test")
@click.argument("topic")
@click.option("--registration", "registration_id", help="Only this registration.")
def send_test(topic: str, registration_id: str | None) -> None:
    """Send TOPIC's sample payload to its registrations now and show the answers (a pull-only
    registration's is stored for its feed)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    found = state.topics.get(topic)
    if found is None:
        raise click.ClickException(unknown_topic_message(topic, state.topics.names()))
    with state.database.independent_session() as session:
        targets = outbox.active_targets(session, topic=topic, registration_id=registration_id)
    if not targets:
        raise click.ClickException(f"No registration of {topic!r} to send to.")
    # An operator waits as long as any attempt may take, whatever the topic.
    results = state.send_test(app, found, targets, timeout=state.settings.async_timeout)
    print_table(
        ["REGISTRATION", "OK", "STATUS", "MS", "ERROR"],
        [
            (
                r.registration_id,
                "stored" if r.stored else "yes" if r.ok else "no",
                r.status_code,
                f"{r.elapsed * 1000:.0f}",
                r.error,
            )
            for r in results
        ],
    )
    if not all(r.ok for r in results):
        raise SystemExit(1)


@webhooks_cli.command("portal-link")
@click.argument("owner")
@click.option(
    "--expires-in",
    type=click.FloatRange(1, MAX_LINK_SECONDS),
    help="Seconds the link lasts; default KAIZEN_WEBHOOKS_PORTAL_LINK_SECONDS (an hour).",
)
@click.option(
    "--base-url",
    help="The host's public address (https://app.example.com); "
    "default KAIZEN_WEBHOOKS_PORTAL_BASE_URL.",
)
def portal_link(owner: str, expires_in: float | None, base_url: str | None) -> None:
    """Print a link opening the integrator portal for OWNER (an owner key, as `list` shows)."""
    try:
        link = make_link(current_app, owner, expires_in=expires_in, base_url=base_url)
    except (WebhooksError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(link.url)
    click.echo(f"It opens {owner}'s webhooks until {isoformat(link.expires_at)}.", err=True)


@webhooks_cli.command("purge")
@click.option("--older-than", type=float, help="Days; default KAIZEN_WEBHOOKS_RETENTION_DAYS (30).")
def purge(older_than: float | None) -> None:
    """Delete finished deliveries (and their attempts) completed longer ago than the retention.
    Pending deliveries are never deleted."""
    state = get_state()
    days = state.settings.retention_days if older_than is None else older_than
    before = state.clock.now() - timedelta(days=days)
    with state.database.writing() as session:
        deliveries, attempts = admin.purge_completed(session, before=before)
    click.echo(
        f"Deleted {counted(deliveries, 'delivery', 'deliveries')} and "
        f"{counted(attempts, 'attempt')} finished before {isoformat(before)}."
    )


@webhooks_cli.command("rotate-keys")
def rotate_keys() -> None:
    """Encrypt every stored secret again under the newest of KAIZEN_WEBHOOKS_SECRET_KEYS.

    Put the new key first in the list (keeping the old ones), run this, then remove the old keys.
    """
    state = get_state()
    with state.database.writing() as session:
        count = registrations.reseal_secrets(session, state.secrets.reseal)
    click.echo(f"Re-encrypted the secrets of {counted(count, 'registration')}.")
