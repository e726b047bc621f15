"""The caps on attempts in flight: a host's freed slots are shared fairly among its
registrations, and a registration whose attempts time out holds one slot at most."""

from __future__ import annotations

from flask_kaizen_webhooks.dispatch.inflight import InFlight


def test_a_freed_slot_goes_to_the_registration_with_the_fewest_in_flight() -> None:
    slots: InFlight[str] = InFlight(2, 3, park_per_host=64, park_total=64)
    assert slots.acquire("slow", "h", "slow-1") is True
    assert slots.acquire("slow", "h", "slow-2") is True
    assert slots.acquire("other", "h", "other-1") is True
    for item in ("slow-3", "slow-4"):  # parked first, behind the host's cap
        assert slots.acquire("slow", "h", item) is None
    assert slots.acquire("healthy", "h", "healthy-1") is None
    assert slots.acquire("healthy", "h", "healthy-2") is None
    # "slow" waits longest, but "healthy" has nothing in flight: it goes first, oldest first.
    assert slots.release("other", "h") == "healthy-1"
    assert slots.release("healthy", "h") == "healthy-2"
    # "slow" still has an attempt in flight: the host's last slot is kept for a registration
    # with none, and "slow" gets its turn once another slot frees.
    assert slots.release("slow", "h") is None
    assert slots.release("healthy", "h") == "slow-3"


def test_ties_go_to_the_oldest_work() -> None:
    slots: InFlight[str] = InFlight(1, 1, park_per_host=64, park_total=64)
    assert slots.acquire("a", "h", "a-1") is True
    assert slots.acquire("b", "h", "b-1") is None
    assert slots.acquire("c", "h", "c-1") is None
    assert slots.release("a", "h") == "b-1"
    assert slots.release("b", "h") == "c-1"


def test_a_hosts_last_slot_goes_to_a_registration_with_nothing_in_flight() -> None:
    slots: InFlight[str] = InFlight(4, 4, park_per_host=64, park_total=64)
    for n in range(3):
        assert slots.acquire("first", "h", f"first-{n}") is True
    assert slots.acquire("first", "h", "first-3") is None  # below its own cap, but the last
    assert slots.acquire("newcomer", "h", "new-1") is True


def test_a_registration_whose_attempts_time_out_holds_one_slot() -> None:
    slots: InFlight[str] = InFlight(2, 4, park_per_host=64, park_total=64)
    slots.timing_out("hanging", True)
    assert slots.acquire("hanging", "h", "hang-1") is True
    assert slots.acquire("hanging", "h", "hang-2") is None  # parked although the host has room
    assert slots.acquire("healthy", "h", "ok-1") is True
    slots.timing_out("hanging", False)  # an answer in time: back to its full share
    assert slots.release("healthy", "h") == "hang-2"


def test_one_registrations_backlog_leaves_room_for_the_others() -> None:
    slots: InFlight[str] = InFlight(1, 1, park_per_host=64, park_total=1000)
    assert slots.park_per_registration == 8
    assert slots.acquire("hanging", "h", "hang-0") is True
    for n in range(8):
        assert slots.acquire("hanging", "h", f"hang-{n + 1}") is None
    assert slots.acquire("hanging", "h", "hang-9") is False  # its park is full: given back
    backlog = slots.backlog()
    assert backlog.skip_registrations == {"hanging"}  # not claimed until its park drains
    assert backlog.waiting == 0
    assert slots.acquire("healthy", "h", "ok-1") is None  # still room for another registration
    assert slots.release("hanging", "h") == "ok-1"


def test_a_registrations_work_stays_under_one_key_while_its_key_changes() -> None:
    """A name's key becomes its address once connected to: work parked after the change
    still meets the slots its attempts under the old key free."""
    slots: InFlight[str] = InFlight(2, 4, park_per_host=64, park_total=64)
    assert slots.acquire("r", "hooks.example", "r-1") is True
    assert slots.acquire("r", "hooks.example", "r-2") is True
    assert slots.acquire("r", "203.0.113.5", "r-3") is None  # at its cap: parked
    assert slots.release("r", "hooks.example") == "r-3"
    assert slots.release("r", "hooks.example") is None
    assert slots.release("r", "hooks.example") is None
    assert slots.acquire("r", "203.0.113.5", "r-4") is True  # idle: the new key from now on
    assert dict(slots._hosts) == {"203.0.113.5": 1}


def test_registrations_that_time_out_share_half_a_host() -> None:
    slots: InFlight[str] = InFlight(2, 4, park_per_host=64, park_total=64)
    for name in ("hang-a", "hang-b", "hang-c"):
        slots.timing_out(name, True)
    assert slots.acquire("hang-a", "h", "a-1") is True
    assert slots.acquire("hang-b", "h", "b-1") is True
    assert slots.acquire("hang-c", "h", "c-1") is None  # half the host is theirs already
    assert slots.acquire("healthy", "h", "ok-1") is True
    assert slots.acquire("healthy", "h", "ok-2") is None  # the last slot: for a newcomer
    assert slots.release("healthy", "h") == "ok-2"  # the freed slot is not for "hang-c"
