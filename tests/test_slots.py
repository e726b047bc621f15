"""The caps on attempts in flight, shared across processes through the database: each process's
share of a cap, how the shares move between processes, and that they never add up to more than
the cap, however many processes take them at once."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage import slots
from flask_kaizen_webhooks.storage.holders import new_token
from flask_kaizen_webhooks.storage.slots import Need, Share
from tests.conftest import DELIVERY_CONFIG
from tests.processes import ROOT, host_environment

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)
KEY = slots.HOST + "127.0.0.1"


@pytest.fixture(params=["sqlite", "postgres"])
def host(make_host: Any, request: pytest.FixtureRequest) -> Any:
    """No engine: the test takes and gives back shares by hand."""
    return make_host(request.param, **DELIVERY_CONFIG, KAIZEN_WEBHOOKS_EXECUTOR="none")


class Process:
    """One process's view of its shares, as an engine keeps it."""

    def __init__(self, host: Any, holder: str | None = None) -> None:
        self.host = host
        self.holder = holder or new_token()
        self.shares: dict[str, Share] = {}
        #: The keys whose attempts time out in other processes, as last told.
        self.timing_out: frozenset[str] = frozenset()

    def share(self, needs: dict[str, Need], now: datetime = NOW) -> dict[str, int]:
        with self.host.app.app_context(), get_state().database.writing() as session:
            shared = slots.share(
                session,
                holder=self.holder,
                needs=needs,
                shares=self.shares,
                now=now,
                until=now + LEASE,
            )
        self.shares = shared.shares
        self.timing_out = shared.timing_out
        return shared.grants


def held(host: Any, key: str = KEY, now: datetime = NOW) -> dict[str, int]:
    """The live shares of ``key`` in the database, by holder."""
    table = slots.SLOTS
    with host.app.app_context(), get_state().database.independent_session() as session:
        rows = session.execute(
            select(table.c.holder, table.c.held).where(table.c.key == key, table.c.until > now)
        )
        return {holder: count for holder, count in rows}


def test_a_process_alone_takes_the_whole_cap_and_keeps_it_while_it_has_work(host: Any) -> None:
    one = Process(host)
    assert one.share({KEY: Need(cap=4, wanted=1, in_flight=0)}) == {KEY: 4}
    assert held(host) == {one.holder: 4}
    # Its work comes and goes: no write while nothing changes.
    assert one.share({KEY: Need(cap=4, wanted=3, in_flight=3)}) == {KEY: 4}
    # Nothing to send for now: it keeps its share (unless someone waits), then gives it back.
    assert one.share({KEY: Need(cap=4, wanted=0, in_flight=0)}) == {KEY: 4}
    assert one.share({}) == {}
    assert held(host) == {}


def test_a_process_waiting_for_slots_gets_a_fair_share_as_the_others_attempts_end(
    host: Any,
) -> None:
    first, second = Process(host), Process(host)
    assert first.share({KEY: Need(cap=4, wanted=4, in_flight=0)}) == {KEY: 4}
    # All four are taken: the second waits, and says so.
    assert second.share({KEY: Need(cap=4, wanted=4, in_flight=0)}) == {KEY: 0}
    # The first comes down to half, but holds the four attempts still under way.
    assert first.share({KEY: Need(cap=4, wanted=4, in_flight=4)}) == {KEY: 2}
    assert held(host) == {first.holder: 4, second.holder: 0}
    assert second.share({KEY: Need(cap=4, wanted=4, in_flight=0)}) == {KEY: 0}
    # Two of its attempts ended: their slots go to the second.
    assert first.share({KEY: Need(cap=4, wanted=4, in_flight=2)}) == {KEY: 2}
    assert second.share({KEY: Need(cap=4, wanted=4, in_flight=0)}) == {KEY: 2}
    assert held(host) == {first.holder: 2, second.holder: 2}
    # The first is done: at its next round it gives its share back, and the second takes it.
    assert first.share({}) == {}
    assert second.share({KEY: Need(cap=4, wanted=4, in_flight=2)}) == {KEY: 4}
    assert held(host) == {second.holder: 4}


def test_an_idle_share_goes_to_a_process_that_waits(host: Any) -> None:
    idle, busy = Process(host), Process(host)
    idle.share({KEY: Need(cap=2, wanted=2, in_flight=0)})
    assert busy.share({KEY: Need(cap=2, wanted=1, in_flight=0)}) == {KEY: 0}
    assert idle.share({KEY: Need(cap=2, wanted=0, in_flight=0)}) == {KEY: 0}
    assert busy.share({KEY: Need(cap=2, wanted=1, in_flight=0)}) == {KEY: 2}


def test_a_registration_timing_out_anywhere_gets_one_slot_everywhere(host: Any) -> None:
    key = slots.REGISTRATION + "r-1"
    sick, other = Process(host), Process(host)
    assert sick.share({key: Need(cap=2, wanted=2, in_flight=0, timing_out=True)}) == {key: 1}
    assert other.share({key: Need(cap=2, wanted=2, in_flight=0)}) == {key: 0}
    assert held(host, key) == {sick.holder: 1, other.holder: 0}
    # The other process is told, so that it holds the registration as timing out too.
    assert other.timing_out == {key} and sick.timing_out == frozenset()


def test_shares_of_a_process_gone_quiet_lapse_with_their_lease(host: Any) -> None:
    gone, alive = Process(host), Process(host)
    gone.share({KEY: Need(cap=3, wanted=3, in_flight=0)})
    assert alive.share({KEY: Need(cap=3, wanted=3, in_flight=0)}) == {KEY: 0}
    later = NOW + LEASE + timedelta(seconds=1)
    assert alive.share({KEY: Need(cap=3, wanted=3, in_flight=0)}, now=later) == {KEY: 3}
    assert held(host, now=later) == {alive.holder: 3}


def test_shares_of_a_dead_process_of_this_machine_are_given_back_at_once(host: Any) -> None:
    dead_token = subprocess.run(
        [
            sys.executable,
            "-c",
            "from flask_kaizen_webhooks.storage.holders import new_token\nprint(new_token())",
        ],
        cwd=ROOT,
        env=host_environment(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dead, alive = Process(host, dead_token), Process(host)
    dead.share({KEY: Need(cap=2, wanted=2, in_flight=0)})
    alive.share({KEY: Need(cap=2, wanted=2, in_flight=0)})
    with host.app.app_context(), get_state().database.writing() as session:
        assert slots.give_back_dead(session) == 1
    assert held(host) == {alive.holder: 0}
    assert alive.share({KEY: Need(cap=2, wanted=2, in_flight=0)}) == {KEY: 2}


RACER = """
import random, sys
from datetime import datetime, timedelta, UTC
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from flask_kaizen_webhooks.storage import slots
from flask_kaizen_webhooks.storage.holders import new_token

url, key, cap, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
holder, shares, worst = new_token(), {}, 0
for n in range(rounds):
    now = datetime.now(UTC)
    grants = shares.get(key)
    in_flight = random.randint(0, grants.held) if grants else 0
    wanted = random.choice([0, random.randint(max(in_flight, 1), cap)])
    needs = {} if not wanted and not in_flight and n % 7 == 0 else {
        key: slots.Need(cap, wanted, in_flight)}
    with Session(engine) as session, session.begin():
        shared = slots.share(session, holder=holder, needs=needs, shares=shares, now=now,
                             until=now + timedelta(seconds=60))
    shares = shared.shares
    with Session(engine) as session:
        total = session.scalar(select(func.sum(slots.SLOTS.c.held)).where(
            slots.SLOTS.c.key == key, slots.SLOTS.c.until > now)) or 0
    worst = max(worst, total)
print(worst)
"""


def test_shares_never_add_up_to_more_than_the_cap_while_processes_race(host: Any) -> None:
    with host.app.app_context():
        get_state().database.create_tables()
        url = get_state().database.engine.url.render_as_string(hide_password=False)
    cap, racers = 5, 4
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, KEY, str(cap), "150"],
            cwd=ROOT,
            env=host_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(racers)
    ]
    worst = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        worst.append(int(out.strip()))
    # Every process saw shares taken, and never more than the cap of them at once.
    assert 0 < max(worst) <= cap
    with host.app.app_context(), get_state().database.independent_session() as session:
        total = session.scalar(select(func.sum(slots.SLOTS.c.held)))
    assert (total or 0) <= cap


def test_a_share_comes_down_only_once_no_attempt_can_start_under_the_grant_in_force(
    host: Any,
) -> None:
    first, second = Process(host), Process(host)
    first.share({KEY: Need(cap=4, wanted=4, in_flight=0)})
    second.share({KEY: Need(cap=4, wanted=4, in_flight=0)})  # waits
    # One attempt under way, but four may start until the new grant is in force: the row
    # keeps four for now.
    assert first.share({KEY: Need(cap=4, wanted=4, in_flight=1, granted=4)}) == {KEY: 2}
    assert held(host)[first.holder] == 4
    assert second.share({KEY: Need(cap=4, wanted=4, in_flight=0)}) == {KEY: 0}
    # The grant of two is in force: the row comes down to it.
    assert first.share({KEY: Need(cap=4, wanted=4, in_flight=1, granted=2)}) == {KEY: 2}
    assert held(host)[first.holder] == 2
    assert second.share({KEY: Need(cap=4, wanted=4, in_flight=0)}) == {KEY: 2}


def test_an_engine_gives_its_shares_back_once_it_has_had_nothing_to_send_for_a_while(
    host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_kaizen_webhooks.delivery import shares as engine_shares
    from flask_kaizen_webhooks.delivery.destinations import AddressBook
    from flask_kaizen_webhooks.delivery.inflight import Needs

    with host.app.app_context():
        settings = get_state().settings
    engine = engine_shares.Shares(settings, AddressBook())

    def round_(current: Needs) -> Any:
        with host.app.app_context(), get_state().database.writing() as session:
            grants = engine.share(session, current, [], now=NOW, until=NOW + LEASE)
        engine.written()
        return grants

    busy = Needs({"r-1": (1, 3)}, {"127.0.0.1": (1, 3)}, frozenset(), {}, {})
    granted = ({"r-1": 2}, {"127.0.0.1": 4})
    assert round_(busy) == (*granted, frozenset())
    idle = Needs({}, {}, frozenset(), *granted)
    assert round_(idle) == (*granted, frozenset())  # kept while it may get work again soon
    assert held(host) == {engine.holder: 4}
    monkeypatch.setattr(engine_shares, "LINGER", 0.0)
    assert round_(idle) == ({"r-1": 0}, {"127.0.0.1": 0}, frozenset())  # withdrawn first...
    assert held(host) == {engine.holder: 4}
    assert round_(Needs({}, {}, frozenset(), {"r-1": 0}, {"127.0.0.1": 0})) == ({}, {}, frozenset())
    assert held(host) == {}  # ... then given back


@pytest.mark.parametrize(
    ("server", "refused"),
    [("sqlite", 0), ("postgres", 0), ("sqlite", 2)],
    ids=["sqlite", "postgres", "the-database-unreachable-at-first"],
)
def test_work_an_engine_cannot_start_while_another_holds_the_cap_goes_back_for_that_one(
    make_host: Any, receiver: Any, server: str, refused: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from sqlalchemy.exc import OperationalError

    from flask_kaizen_webhooks.storage import claims
    from flask_kaizen_webhooks.storage.tables import Delivery
    from tests.conftest import register
    from tests.receivers import Reply, wait_until

    config = {
        **DELIVERY_CONFIG,
        "KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION": 1,
        "KAIZEN_WEBHOOKS_CLAIM_LEASE": 120,  # far beyond this test: no lease runs out here
    }
    holder = make_host(server, **{**config, "KAIZEN_WEBHOOKS_POLL_INTERVAL": 30})
    with holder.app.app_context():
        url = get_state().database.engine.url.render_as_string(hide_password=False)
    other = make_host(
        server,
        keep_tables=True,
        **{**config, "KAIZEN_WEBHOOKS_POLL_INTERVAL": 0.1, "KAIZEN_WEBHOOKS_DATABASE_URI": url},
    )
    gate = threading.Event()
    server_ = receiver(lambda request, n: Reply(wait=gate))
    register(holder, server_.url())
    holder.webhooks.start(holder.app)
    with holder.app.app_context():
        holder.webhooks.trigger("profile_updated", {"n": 0})
    server_.wait_for(1)  # the holder's attempt hangs: it holds the registration's one slot
    # With ``refused``, the database is unreachable for the first give-backs: the engine
    # tries again at its next polls, rather than leaving the work claimed until its leases end.
    release_claims = claims.release_claims
    refusals = iter(range(refused))

    def release_or_refuse(*args: Any, **kwargs: Any) -> None:
        if next(refusals, None) is not None:
            raise OperationalError("UPDATE ...", {}, ConnectionRefusedError("connection refused"))
        release_claims(*args, **kwargs)

    monkeypatch.setattr(claims, "release_claims", release_or_refuse)
    other.webhooks.start(other.app)
    with other.app.app_context():
        later = [other.webhooks.trigger("profile_updated", {"n": n})[0] for n in range(1, 4)]

    def given_back() -> bool:
        with other.app.app_context(), get_state().database.independent_session() as session:
            rows = session.scalars(select(Delivery).where(Delivery.id.in_(later))).all()
            return all(row.claim_token is None and row.status == "pending" for row in rows)

    # The other engine claims them, finds the cap held, says so, and gives them back within
    # a few of its polls, rather than holding them until the holder is done.
    wait_until(lambda: other_claimed(other, later), timeout=10, interval=0.02)
    wait_until(given_back, timeout=5, interval=0.05)
    assert next(refusals, None) is None  # the refusals were met
    gate.set()
    wait_until(lambda: len(server_.received) == 4, timeout=30)


def other_claimed(host: Any, ids: list[str]) -> bool:
    """True once any of ``ids`` has been claimed."""
    from flask_kaizen_webhooks.storage.tables import Delivery

    with host.app.app_context(), get_state().database.independent_session() as session:
        rows = session.scalars(select(Delivery).where(Delivery.id.in_(ids))).all()
        return any(row.claim_token is not None for row in rows)


def test_the_extensions_writes_read_what_others_committed_whatever_the_hosts_isolation(
    make_host: Any,
) -> None:
    from sqlalchemy import text

    host = make_host(
        "postgres-hostdb",
        **DELIVERY_CONFIG,
        KAIZEN_WEBHOOKS_EXECUTOR="none",
        SQLALCHEMY_ENGINE_OPTIONS={"isolation_level": "REPEATABLE READ"},
    )
    with host.app.app_context(), get_state().database.writing() as session:
        level = session.execute(text("SHOW transaction_isolation")).scalar()
    assert level == "read committed"
    with host.app.app_context():
        assert host.db is not None
        assert host.db.session.execute(text("SHOW transaction_isolation")).scalar() == (
            "repeatable read"  # the host's own sessions keep theirs
        )
