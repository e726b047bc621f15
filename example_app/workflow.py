"""The bookings' workflow: which transition leads where, and what it sets off."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transition:
    """A named step of the workflow: allowed from some states, leading to one (or staying)."""

    name: str
    sources: frozenset[str]
    target: str | None  # None: the state does not change
    actions: tuple[str, ...]


TRANSITIONS = {
    transition.name: transition
    for transition in (
        Transition("approve", frozenset({"requested"}), "approved", ("notify_user",)),
        Transition("complete", frozenset({"approved"}), "completed", ("issue_certificate",)),
        Transition(
            "cancel",
            frozenset({"requested", "approved"}),
            "cancelled",
            ("notify_user", "free_slot"),
        ),
        Transition(
            "comment",
            frozenset({"requested", "approved", "completed", "cancelled"}),
            None,
            ("store_comment",),
        ),
    )
}
