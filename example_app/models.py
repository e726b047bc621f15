"""The host's own data: API users, user profiles and bookings."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db


def next_rev(rev: str | None, document: dict[str, Any]) -> str:
    """A CouchDB-style rev for the next version of ``document``."""
    number = int(rev.split("-", 1)[0]) + 1 if rev else 1
    digest = hashlib.md5(json.dumps(document, sort_keys=True).encode(), usedforsecurity=False)
    return f"{number}-{digest.hexdigest()}"


class ApiUser(db.Model):  # type: ignore[name-defined,misc]
    """An API user of the host, authenticated by a bearer token."""

    __tablename__ = "api_users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token: Mapped[str] = mapped_column(String(200), unique=True)
    can_manage_webhooks: Mapped[bool] = mapped_column(default=False)
    #: May edit any profile and booking (the demo's admin).
    is_admin: Mapped[bool] = mapped_column(default=False)


class Profile(db.Model):  # type: ignore[name-defined,misc]
    """A user of the platform, created at their first SSO login."""

    __tablename__ = "profiles"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    rev: Mapped[str] = mapped_column(String(64))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(200), default="")
    user_fields: Mapped[list[Any]] = mapped_column(JSON, default=list)
    audit_log: Mapped[list[Any]] = mapped_column(JSON, default=list)
    sso: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)

    def to_document(self) -> dict[str, Any]:
        """The profile as the API and the ``profile_updated`` webhook show it."""
        return {
            "auditLog": list(self.audit_log or []),
            "id": self.id,
            "email": self.email,
            "rev": self.rev,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "userFields": list(self.user_fields or []),
        }


class Booking(db.Model):  # type: ignore[name-defined,misc]
    """A booking that moves through a small workflow."""

    __tablename__ = "bookings"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rev: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200), default="")
    user_id: Mapped[str | None] = mapped_column(String(36))
    start: Mapped[str | None] = mapped_column(String(40))
    end: Mapped[str | None] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20), default="requested")
    comments: Mapped[list[Any]] = mapped_column(JSON, default=list)

    def to_document(self) -> dict[str, Any]:
        """The booking as the API and the booking webhooks show it."""
        return {
            "id": self.id,
            "rev": self.rev,
            "title": self.title,
            "userId": self.user_id,
            "start": self.start,
            "end": self.end,
            "state": self.state,
            "comments": list(self.comments or []),
        }
