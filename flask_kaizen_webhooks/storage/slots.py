"""The caps on attempts in flight, held across processes: each process holds a share of each cap
it sends under (a row of ``kaizen_webhook_slots`` per key), and the shares of one key never add
up to more than its cap.

A process with work for a key takes whatever part of the cap nobody else holds, and keeps it
while it has work, so that its attempts follow one another without a round trip to the
database. One that waits for slots says so in its row (``wanted`` above ``held``); the others
then come down to a fair share (the cap divided among the processes with work, at least one
slot each) as their attempts end, and it takes what they gave back at its next round. A share
comes down in two rounds: the first lowers the grant in force, the second the row, once no
attempt can start under the former grant any more. A share
is given back once its holder has had nothing to send for a while, when it stops, when it is
found dead (see :mod:`.holders`), or when its lease runs out.

A share only grows under a lock (PostgreSQL: an advisory lock of the transaction; SQLite: the
write lock, taken by the first statement), so two processes never both take the same free
slots. It may shrink at any time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from .holders import Holder, this_process
from .tables import Slot, metadata

SLOTS = metadata.tables[Slot.__tablename__]

#: The advisory lock under which shares grow (PostgreSQL).
LOCK_KEY = 0x6B616977  # "kaiw"
#: The longest wait for that lock, in milliseconds.
LOCK_TIMEOUT_MS = 5000

REGISTRATION = "registration:"
HOST = "host:"


@dataclass(frozen=True, slots=True)
class Need:
    """What a process needs of one key's cap."""

    #: The key's cap.
    cap: int
    #: Attempts it would run now (under way or waiting); 0: it has nothing for the key, and
    #: keeps its share for now (with ``linger``) unless another process waits for it.
    wanted: int
    #: Attempts under way now: its share never drops below them.
    in_flight: int
    #: Its last attempt for this registration timed out: one slot at most, in every process.
    timing_out: bool = False
    #: The slots it may use now (its last grant, in force until the new one is): its attempts
    #: may still grow to them meanwhile, so its share does not drop below them yet.
    granted: int = 0
    #: With nothing to send: keep the share for a while (True) or give it back (False).
    linger: bool = True


@dataclass(frozen=True, slots=True)
class Share:
    """One process's share of one key's cap, as its row says."""

    held: int
    #: 0: nothing to send; above ``held``: waiting for slots.
    wanted: int
    timing_out: bool
    until: datetime


@dataclass(frozen=True, slots=True)
class Shared:
    """What :func:`share` gave: the rows now held, how many attempts may be under way for
    each key (which may be below the row while the attempts above it end), and the keys whose
    attempts time out in another process."""

    shares: dict[str, Share]
    grants: dict[str, int]
    timing_out: frozenset[str] = frozenset()


_OTHERS = select(
    SLOTS.c.key, SLOTS.c.holder, SLOTS.c.held, SLOTS.c.wanted, SLOTS.c.timing_out
).where(
    SLOTS.c.key.in_(bindparam("b_keys", expanding=True)),
    SLOTS.c.holder != bindparam("b_holder"),
    SLOTS.c.until > bindparam("b_now"),
)

_DROP = delete(SLOTS).where(
    SLOTS.c.holder == bindparam("b_holder"), SLOTS.c.key.in_(bindparam("b_keys", expanding=True))
)

_EXPIRED = delete(SLOTS).where(SLOTS.c.until <= bindparam("b_now"))


def share(
    session: Session,
    *,
    holder: str,
    needs: Mapping[str, Need],
    shares: Mapping[str, Share],
    now: datetime,
    until: datetime,
    renew_before: datetime | None = None,
) -> Shared:
    """Bring this process's shares (``shares``, as last written) in line with ``needs``: keys
    not in ``needs`` are given back. Renews, to ``until``, every row that ends before
    ``renew_before`` (default: half way to ``until``)."""
    connection = session.connection()
    # A row of this holder whose lease ran out may be gone (another process clears expired
    # rows): it holds nothing, and growing back to it takes the lock like any growth.
    shares = {key: share for key, share in shares.items() if share.until > now}
    others = _others(session, holder, needs, now)
    rows = {key: _row(need, others.get(key, []), shares.get(key)) for key, need in needs.items()}
    if any(row[0] > _held(shares.get(key)) for key, row in rows.items()):
        # A share grows: under the lock, from what the others hold now.
        if connection.dialect.name == "postgresql":
            # Never wait long on a process that stalls holding it: this round fails, the
            # next one tries again.
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
            connection.execute(select(func.pg_advisory_xact_lock(LOCK_KEY)))
        connection.execute(_EXPIRED, {"b_now": now})  # on SQLite, this takes the write lock
        others = _others(session, holder, needs, now)
        rows = {
            key: _row(need, others.get(key, []), shares.get(key)) for key, need in needs.items()
        }
    if renew_before is None:
        renew_before = now + (until - now) / 2
    written: dict[str, Share] = {}
    kept: dict[str, Share] = {}
    for key, (held, wanted, timing_out, _grant) in rows.items():
        old = shares.get(key)
        if held == 0 and wanted == 0:
            continue  # given back
        if (
            old is not None
            and (old.held, old.wanted, old.timing_out) == (held, wanted, timing_out)
            and old.until > renew_before
        ):
            kept[key] = old
        else:
            written[key] = Share(held, wanted, timing_out, until)
    # Rows written replace this holder's rows of those keys, whatever it believed it held (a
    # commit that reached the database although its answer was lost leaves a row behind).
    dropped = sorted((shares.keys() | written.keys()) - kept.keys())
    if dropped:
        connection.execute(_DROP, {"b_holder": holder, "b_keys": dropped})
    if written:
        connection.execute(
            insert(SLOTS),
            [
                {
                    "key": key,
                    "holder": holder,
                    "held": row.held,
                    "wanted": row.wanted,
                    "timing_out": row.timing_out,
                    "until": row.until,
                }
                for key, row in written.items()
            ],
        )
    elsewhere = frozenset(
        key for key, found in others.items() if any(other.timing_out for other in found)
    )
    return Shared({**kept, **written}, {key: row[3] for key, row in rows.items()}, elsewhere)


def give_back(session: Session, *, holder: str) -> None:
    """Give back every share of ``holder`` (it stops)."""
    session.execute(delete(SLOTS).where(SLOTS.c.holder == holder))


def give_back_dead(session: Session) -> int:
    """Give back the shares of processes of this machine that no longer run; how many rows."""
    me = this_process()
    holders = session.scalars(
        select(SLOTS.c.holder).where(SLOTS.c.holder.like(f"{me.machine}-%")).distinct()
    ).all()
    dead = [
        name for name in holders if (holder := Holder.of(name)) is not None and not holder.runs()
    ]
    if not dead:
        return 0
    result = session.execute(delete(SLOTS).where(SLOTS.c.holder.in_(dead)))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _held(share: Share | None) -> int:
    return 0 if share is None else share.held


@dataclass(frozen=True, slots=True)
class _Other:
    held: int
    wanted: int
    timing_out: bool


def _others(
    session: Session, holder: str, keys: Mapping[str, object], now: datetime
) -> dict[str, list[_Other]]:
    """The live shares of the other processes, by key."""
    found: dict[str, list[_Other]] = {}
    if not keys:
        return found
    params = {"b_keys": sorted(keys), "b_holder": holder, "b_now": now}
    for key, _holder, held, wanted, timing_out in session.connection().execute(_OTHERS, params):
        found.setdefault(key, []).append(_Other(held, wanted, bool(timing_out)))
    return found


def _row(need: Need, others: list[_Other], old: Share | None) -> tuple[int, int, bool, int]:
    """This process's row for a key (held, wanted, timing out) and its grant."""
    cap = 1 if need.timing_out or any(other.timing_out for other in others) else need.cap
    free = max(0, cap - sum(other.held for other in others))
    waiting = [other for other in others if other.wanted > other.held]
    if need.wanted == 0:
        grant = min(_held(old), free) if need.linger and not waiting else 0
    else:
        grant = free  # the whole free part while it has work: no round trip between attempts
        if waiting:
            with_work = 1 + sum(1 for other in others if other.wanted > 0)
            grant = min(grant, max(1, cap // with_work))
    held = max(grant, need.in_flight, need.granted)
    wanted = 0 if need.wanted == 0 else (held + 1 if need.wanted > grant else held)
    return held, wanted, need.timing_out, grant
