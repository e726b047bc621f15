"""The extension's tables, on a metadata of their own so they fit any host database.

Hosts that manage their schema with migrations add :data:`metadata` to their targets (see
``docs/storage.rst``); everyone else gets the tables created on first use.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import DateTime, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The metadata holding every table of the extension.
metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the extension's models."""

    metadata = metadata


class RegistrationState:
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
    url: Mapped[str] = mapped_column(Text)
    url_digest: Mapped[str] = mapped_column(String(64))
    secret: Mapped[str] = mapped_column(Text)
    rev: Mapped[str] = mapped_column(String(64))
    rev_number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=RegistrationState.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

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
            "created_at": _isoformat(self.created_at),
            "updated_at": _isoformat(self.updated_at),
        }


def url_digest(url: str) -> str:
    """A fixed-size key for ``url``, so the uniqueness constraint fits every database."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def _isoformat(moment: datetime) -> str:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat().replace("+00:00", "Z")
