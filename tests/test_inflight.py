"""The caps on attempts in flight: a host's freed slots are shared fairly among its
registrations, and a registration whose attempts time out holds one slot at most."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from flask_kaizen_webhooks.delivery.inflight import InFlight


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
    assert slots.release("other", "h") == ["healthy-1"]
    assert slots.release("healthy", "h") == ["healthy-2"]
    # "slow" still has an attempt in flight: the host's last slot is kept for a registration
    # with none, and "slow" gets its turn once another slot frees.
    assert slots.release("slow", "h") == []
    assert slots.release("healthy", "h") == ["slow-3"]


def test_ties_go_to_the_oldest_work() -> None:
    slots: InFlight[str] = InFlight(1, 1, park_per_host=64, park_total=64)
    assert slots.acquire("a", "h", "a-1") is True
    assert slots.acquire("b", "h", "b-1") is None
    assert slots.acquire("c", "h", "c-1") is None
    assert slots.release("a", "h") == ["b-1"]
    assert slots.release("b", "h") == ["c-1"]


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
    assert slots.release("healthy", "h") == ["hang-2"]


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
    assert slots.release("hanging", "h") == ["ok-1"]


def test_a_registrations_work_stays_under_one_key_while_its_key_changes() -> None:
    """A name's key becomes its address once connected to: work parked after the change
    still meets the slots its attempts under the old key free."""
    slots: InFlight[str] = InFlight(2, 4, park_per_host=64, park_total=64)
    assert slots.acquire("r", "hooks.example", "r-1") is True
    assert slots.acquire("r", "hooks.example", "r-2") is True
    assert slots.acquire("r", "203.0.113.5", "r-3") is None  # at its cap: parked
    assert slots.release("r", "hooks.example") == ["r-3"]
    assert slots.release("r", "hooks.example") == []
    assert slots.release("r", "hooks.example") == []
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
    assert slots.release("healthy", "h") == ["ok-2"]  # the freed slot is not for "hang-c"


def test_a_freed_slot_that_lets_another_registration_start_starts_it_too() -> None:
    """A release may make two parked items able to start: the freed slot's, and the one a
    registration left with nothing in flight may now take."""
    slots: InFlight[str] = InFlight(2, 4, park_per_host=64, park_total=64)
    for name in "abc":
        assert slots.acquire(name, "h", f"{name}1") is True
    for name in "abc":
        assert slots.acquire(name, "h", f"{name}2") is None  # the last slot is kept
    assert slots.release("c", "h") == ["a2", "c2"]
    assert slots._hosts["h"] == 4


def test_a_registration_moves_with_its_work_to_a_new_key() -> None:
    """A registration whose URL's key changes (its name now counted by its address) takes
    its attempts and parked work along, so one server never gets slots under two keys."""
    slots: InFlight[str] = InFlight(2, 4, park_per_host=64, park_total=64)
    assert slots.acquire("r", "hooks.example", "r1") is True
    assert slots.acquire("r", "hooks.example", "r2") is True
    assert slots.acquire("r", "hooks.example", "r3") is None
    for name in "stu":
        assert slots.acquire(name, "203.0.113.5", f"{name}1") is True
    assert slots.acquire("r", "203.0.113.5", "r4") is None  # the server is full
    assert dict(slots._hosts) == {"203.0.113.5": 5}  # r's two attempts moved along
    assert slots.release("r", "hooks.example") == []  # still at the cap
    assert slots.release("s", "203.0.113.5") == []  # the last slot: r has one in flight
    assert slots.release("r", "hooks.example") == ["r3"]  # r's parked work, moved along
    assert dict(slots._hosts) == {"203.0.113.5": 3}


def test_work_held_back_by_its_registration_does_not_ask_for_the_hosts_slots() -> None:
    """With shares of the caps held across processes: parked work that its registration's
    share keeps back asks for that share only, so that the host's slots go to a process whose
    work can use them."""
    slots: InFlight[str] = InFlight(2, 4, park_per_host=64, park_total=64, granted=True)
    assert slots.grant({"hanging": 2, "healthy": 1}, {"h": 4}) == []
    assert slots.acquire("hanging", "h", "hang-1") is True
    assert slots.acquire("hanging", "h", "hang-2") is True
    for n in range(3):
        assert slots.acquire("hanging", "h", f"hang-{n + 3}") is None  # its cap
    assert slots.acquire("other", "h", "other-1") is None  # no share of its cap here
    needs = slots.needs()
    assert needs.registrations == {"hanging": (2, 3), "other": (0, 1)}
    assert needs.hosts == {"h": (2, 0)}  # none of the parked work could use another slot
    # Once "other" has a share, its work wants a slot of the host: it starts if there is one.
    assert slots.grant({"hanging": 2, "other": 1}, {"h": 2}) == []
    assert slots.needs().hosts == {"h": (2, 1)}
    assert slots.grant({"hanging": 2, "other": 1}, {"h": 4}) == [("other-1", "h")]


def test_a_registration_timing_out_in_another_process_is_held_as_if_here() -> None:
    """It holds one slot at most here too, and counts in the half of the host that all the
    registrations timing out share, so the other half stays with those answering in time."""
    slots: InFlight[str] = InFlight(2, 4, park_per_host=64, park_total=64, granted=True)
    grants = {"hang-a": 1, "hang-b": 1, "healthy": 2}
    slots.grant(grants, {"h": 2}, timing_out={"hang-a", "hang-b"})
    assert slots.acquire("hang-a", "h", "a-1") is True
    assert slots.acquire("hang-b", "h", "b-1") is None  # half of this share is theirs already
    assert slots.acquire("healthy", "h", "ok-1") is True
    assert slots.needs().timing_out == frozenset()  # what this process saw itself
    # They answer in time again, elsewhere: back to their full shares.
    assert slots.release("healthy", "h") == []
    assert slots.grant(grants, {"h": 2}) == [("b-1", "h")]


@given(
    per_registration=st.integers(1, 4),
    per_host=st.integers(1, 5),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["acquire", "release", "timing_out", "on_time"]),
            st.sampled_from(["r1", "r2", "r3", "r4"]),
            st.sampled_from(["name.example", "203.0.113.5", "198.51.100.7"]),
        ),
        max_size=120,
    ),
)
@settings(max_examples=int(os.environ.get("INFLIGHT_EXAMPLES", "300")), deadline=None)
def test_no_work_is_lost_and_no_slot_is_left_idle(
    per_registration: int, per_host: int, steps: list[tuple[str, str, str]]
) -> None:
    """Whatever happens, every item is started, parked or refused, never lost; the counts
    match what is in flight; and nothing stays parked once every attempt has ended."""
    slots: InFlight[int] = InFlight(per_registration, per_host, park_per_host=8, park_total=20)
    running: list[tuple[str, int]] = []  # (registration, item) of the attempts in flight
    refused: list[int] = []
    done: list[int] = []
    owner: dict[int, str] = {}

    def end_one(host: str) -> None:
        ended, item = running.pop(0)
        done.append(item)
        running.extend((owner[started], started) for started in slots.release(ended, host))

    for number, (action, registration, host) in enumerate(steps):
        if action == "acquire":
            owner[number] = registration
            taken = slots.acquire(registration, host, number)
            if taken:
                running.append((registration, number))
            elif taken is False:
                refused.append(number)
        elif action == "release" and running:
            end_one(host)
        elif action in ("timing_out", "on_time"):
            slots.timing_out(registration, action == "timing_out")
        assert sum(slots._hosts.values()) == len(running)
        assert sum(parked for _, parked in slots.needs().hosts.values()) <= slots.parked
        assert sum(slots._registrations.values()) == len(running)
        assert len(owner) == len(running) + len(done) + len(refused) + slots.parked
    while running:  # every attempt ends: all parked work gets its turn
        end_one("any")
    assert slots.parked == 0
    assert not slots._hosts and not slots._registrations and not slots._host_of
