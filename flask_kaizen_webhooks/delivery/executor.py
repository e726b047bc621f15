"""What every background engine offers, and the hand-over of outbox rows after commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

PENDING_KEY = "kaizen_webhooks_pending"


class Executor(Protocol):
    """A background engine that sends committed deliveries."""

    def start(self) -> None:
        """Begin (or resume) delivering in this process; a no-op when already running."""

    def autostart(self) -> None:
        """Start on first use, unless stopped on purpose."""

    def submit(self, delivery_ids: list[str]) -> None:
        """Deliveries just committed to the outbox."""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work without losing any."""

    def after_fork(self) -> None:
        """In a forked child: forget the parent's threads (nothing runs until started)."""

    def state(self) -> str:
        """The engine in this process: ``running``, ``stopped``, ``died`` (its thread ended
        without a stop), or ``elsewhere`` (other processes send)."""


class NoExecutor:
    """No delivery in this process: another one (``flask webhooks worker``) sends the outbox."""

    def start(self) -> None:
        return None

    def autostart(self) -> None:
        return None

    def submit(self, delivery_ids: list[str]) -> None:
        return None

    def stop(self, timeout: float = 30.0) -> None:
        return None

    def after_fork(self) -> None:
        return None

    def state(self) -> str:
        return "elsewhere"


#: What a session hands over when it commits: to which executor, the ids, and what to call.
Pending = tuple["Executor", list[str], Callable[[], None] | None]


def hand_over_after_commit(
    session: Session,
    executor: Executor,
    ids: list[str],
    committed: Callable[[], None] | None = None,
) -> None:
    """Give ``ids`` to ``executor`` when ``session``'s transaction commits (and call
    ``committed``); forget them if it ends otherwise (rolled back, or the session closed). A
    savepoint's end is not the transaction's.

    No SQL runs in these hooks (SQLAlchemy forbids it after commit): they only pass ids on.
    """
    session.info.setdefault(PENDING_KEY, []).append((executor, ids, committed))


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: the transaction goes on
    pending: list[Pending] = session.info.pop(PENDING_KEY, None) or []
    for executor, ids, committed in pending:
        if committed is not None:
            committed()
        executor.submit(ids)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (handed over already), rolled back or closed
        session.info.pop(PENDING_KEY, None)


# Listened to on every session, once: a host's session is often new at each request, and
# listening on each would cost more than this costs a session with nothing to hand over.
event.listen(Session, "after_commit", _after_commit)
event.listen(Session, "after_transaction_end", _after_transaction_end)
