"""The portal's sessions: one per link, opened when the link is followed, read on every page,
ended when the integrator signs out; gone once the link has expired."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from .tables import PortalSession


def open_session(
    session: Session, *, link_id: str, owner: str, expires_at: datetime, now: datetime
) -> bool:
    """Open the session of link ``link_id`` (again: a link may be followed more than once while
    it lasts); False if that session was ended. Expired sessions (anyone's) are deleted."""
    session.execute(
        delete(PortalSession)
        .where(PortalSession.expires_at < now)
        .execution_options(synchronize_session=False)
    )
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert(PortalSession)
        .values(id=link_id, owner=owner, expires_at=expires_at, ended=False)
        .on_conflict_do_nothing(index_elements=[PortalSession.id])
    )
    ended = session.scalar(select(PortalSession.ended).where(PortalSession.id == link_id))
    return ended is False


def live_owner(session: Session, *, session_id: str, now: datetime) -> str | None:
    """The owner of session ``session_id`` while it lasts and was not ended; else None."""
    owner: str | None = session.scalar(
        select(PortalSession.owner).where(
            PortalSession.id == session_id,
            PortalSession.ended.is_(False),
            PortalSession.expires_at > now,
        )
    )
    return owner


def end_session(session: Session, *, session_id: str) -> None:
    """End session ``session_id``: its link opens nothing more."""
    session.execute(
        update(PortalSession)
        .where(PortalSession.id == session_id)
        .values(ended=True)
        .execution_options(synchronize_session=False)
    )
