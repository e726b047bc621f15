"""The extension's tables, on a metadata of their own so they fit any host database.

The schema is kept up to date by the extension's own migrations (see :mod:`.migrations` and
``docs/storage.rst``).
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..clock import isoformat, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The metadata holding every table of the extension.
metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    """Declarative base of the extension's models."""

    metadata = metadata


class RegistrationState(enum.StrEnum):
    """Values of :attr:`Registration.state`."""

    ACTIVE = "active"
    DISABLED = "disabled"


class Registration(Base):
    """An integrator's subscription of one URL to one topic, signed with their secret."""

    __tablename__ = "kaizen_webhook_registrations"
    __table_args__ = (
        UniqueConstraint("owner", "topic", "url_digest", name="uq_kaizen_webhook_registration"),
        Index("ix_kaizen_webhook_registrations_listing", "owner", "created_at", "id"),
        Index("ix_kaizen_webhook_registrations_topic", "topic", "state"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(64))
    #: None: a pull-only registration, never pushed to and read through its feed.
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: :func:`url_digest` of ``url`` (of ``""`` for a pull-only one: one per owner and topic).
    url_digest: Mapped[str] = mapped_column(String(64))
    #: The integrator's secret, sealed (see :mod:`flask_kaizen_webhooks.sealing`).
    secret: Mapped[str] = mapped_column(Text)
    #: Counts the secrets this registration had; sent as the JWS ``kid``.
    secret_version: Mapped[int] = mapped_column(Integer, default=1)
    #: The secret before the last rotation, still signing until ``previous_secret_until``.
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rev: Mapped[str] = mapped_column(String(64))
    rev_number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=RegistrationState.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Deliveries failed for good in a row, and when the first of them failed.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    #: :class:`Ordering`: ``"fifo"`` sends its deliveries one at a time, in creation order.
    ordering: Mapped[str] = mapped_column(String(8), default="none", server_default="none")
    #: The most attempts that start in any second, in all processes; None: no limit of its own.
    max_per_second: Mapped[int | None] = mapped_column(Integer)
    #: The earliest start of its next attempt under ``max_per_second`` (see
    #: :mod:`flask_kaizen_webhooks.storage.pacing`).
    paced_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:
        # The secret is deliberately left out.
        return (
            f"<Registration {self.id} owner={self.owner!r} topic={self.topic!r} "
            f"url={self.url!r} rev={self.rev!r} state={self.state!r}>"
        )

    def to_public_dict(self) -> dict[str, object]:
        """The registration as the API shows it: everything but the secret."""
        return {
            "id": self.id,
            "rev": self.rev,
            "topic": self.topic,
            "url": self.url,
            "state": self.state,
            "disabled_reason": self.disabled_reason,
            "ordering": self.ordering,
            "max_per_second": self.max_per_second,
            "secret_version": self.secret_version,
            "previous_secret_valid_until": isoformat(self.previous_secret_until),
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }


class Ordering(enum.StrEnum):
    """Values of :attr:`Registration.ordering`."""

    #: Attempts as they come due, several at once: the fastest.
    NONE = "none"
    #: One attempt at a time, in creation order; a retrying delivery holds those behind it.
    FIFO = "fifo"


class DeliveryStatus(enum.StrEnum):
    """Values of :attr:`Delivery.status`."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Made for a pull-only registration: kept for its feed, never sent (finished when made).
    STORED = "stored"


#: :attr:`Delivery.mode` of a test webhook; other deliveries have their topic's
#: :class:`~flask_kaizen_webhooks.Mode`.
TEST_MODE: Final = "test"


#: The condition of the index of pending deliveries.
PENDING_ONLY = "status = 'pending'"


class Delivery(Base):
    """One webhook for one registration: the outbox row, and its log once done.

    Its id is the ``webhook_request_id`` the receiver sees, unchanged across retries. A pending
    delivery is due at ``next_attempt_at``; a worker claims it by setting ``claim_token`` and
    pushing ``next_attempt_at`` a lease into the future, so a crashed worker's claim expires.
    """

    __tablename__ = "kaizen_webhook_deliveries"
    __table_args__ = (
        Index("ix_kaizen_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_kaizen_webhook_deliveries_registration", "registration_id", "created_at", "id"),
        # The pending deliveries of each registration in the order made: what FIFO
        # registrations' claims look along (see storage/claims.py).
        Index(
            "ix_kaizen_webhook_deliveries_pending",
            "registration_id",
            "created_at",
            "id",
            postgresql_where=text(PENDING_ONLY),
            sqlite_where=text(PENDING_ONLY),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    registration_id: Mapped[str] = mapped_column(String(36))
    owner: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(8))
    #: The exact JSON document that is signed and sent, ``webhook_request_id`` included.
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Index into the retry schedule of the next retry (reset by a redelivery).
    retry_index: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claim_token: Mapped[str | None] = mapped_column(String(36))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The W3C ``traceparent`` of the span current where its event was fired, if any: its
    #: attempts' spans join that trace (see :mod:`flask_kaizen_webhooks.tracing`).
    trace_parent: Mapped[str | None] = mapped_column(String(55))
    #: When it was last queued: its event fired, or a redelivery or recovery asked for it (its
    #: latency runs from there); None for a synchronous one, or one made before this column.
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"<Delivery {self.id} {self.topic} {self.status} attempts={self.attempts}>"

    def to_public_dict(self) -> dict[str, object]:
        """The delivery as the API shows it (without its payload)."""
        return {
            "id": self.id,
            "registration_id": self.registration_id,
            "topic": self.topic,
            "mode": self.mode,
            "status": self.status,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "response_excerpt": self.response_excerpt,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "completed_at": isoformat(self.completed_at),
            "next_attempt_at": (
                isoformat(self.next_attempt_at) if self.status == DeliveryStatus.PENDING else None
            ),
        }


class Event(Base):
    """An asynchronous event fired inside the host's transaction: one outbox row for all its
    recipients, so that the host's request writes one row however many registrations there are.
    The engine fans it out into one :class:`Delivery` per recipient once it is committed,
    and deletes it in the same transaction."""

    __tablename__ = "kaizen_webhook_events"

    #: Time-ordered (UUIDv7): the oldest events are fanned out first.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    topic: Mapped[str] = mapped_column(String(64))
    #: The event's JSON document, without ``webhook_request_id``.
    document: Mapped[str] = mapped_column(Text)
    #: JSON: ``[[delivery id, registration id, owner], ...]``, the registrations active when the
    #: event was fired; the delivery ids are the ones ``trigger`` returned. A pull-only
    #: registration's entry has a fourth item, ``1``: its delivery is stored, not sent.
    recipients: Mapped[str] = mapped_column(Text)
    #: When it was fired, or committed if the host's transaction went on for a while after
    #: (see ``delivery.publish.date_at_commit``): its deliveries are due from then.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The W3C ``traceparent`` of the span current where it was fired, if any; its deliveries
    #: get it.
    trace_parent: Mapped[str | None] = mapped_column(String(55))


class Attempt(Base):
    """One HTTP request of a delivery and what came of it."""

    __tablename__ = "kaizen_webhook_attempts"
    __table_args__ = (Index("ix_kaizen_webhook_attempts_delivery", "delivery_id", "number"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(String(36))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    elapsed: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)

    def to_public_dict(self) -> dict[str, object]:
        """The attempt as the API shows it."""
        return {
            "number": self.number,
            "started_at": isoformat(self.started_at),
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "status_code": self.status_code,
            "error": self.error,
            "response_excerpt": self.response_excerpt,
        }


class CallCount(Base):
    """How many calls of one kind one owner made in one minute: what the per-owner limits of
    the test endpoint and of redeliveries count, the same for every process."""

    __tablename__ = "kaizen_webhook_call_counts"

    #: ``"<kind>:<owner>"``.
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    #: The minute counted, as minutes since the epoch.
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class Slot(Base):
    """One process's share of one cap on attempts in flight (of a registration, or of a host):
    what makes the caps hold across processes. Each process holds a row per key it sends to,
    renewed while it runs and given back when it has nothing more for that key (see
    :mod:`..storage.slots`)."""

    __tablename__ = "kaizen_webhook_slots"

    #: ``"registration:<id>"`` or ``"host:<host>"``.
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    #: The holding process's claim-token prefix (see :mod:`..storage.holders`).
    holder: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Attempts the holder may have under way for the key.
    held: Mapped[int] = mapped_column(Integer)
    #: Attempts the holder would run now if it could (more than ``held``: it waits for slots).
    wanted: Mapped[int] = mapped_column(Integer)
    #: The holder's last attempt for this registration timed out: one slot at most, everywhere.
    timing_out: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The share lapses then unless renewed (its holder stopped without giving it back).
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PortalSession(Base):
    """The session a portal link opened: it lasts as long as the link, and once ended (the
    integrator signed out) the link opens nothing more."""

    __tablename__ = "kaizen_webhook_portal_sessions"

    #: The link's id, carried in its signed token.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended: Mapped[bool] = mapped_column(Boolean, default=False)


def url_digest(url: str | None) -> str:
    """A fixed-size key for ``url``, so the uniqueness constraint fits every database; that of
    ``""`` (never a valid URL) for a pull-only registration's None."""
    return hashlib.sha256((url or "").encode("utf-8")).hexdigest()
