"""What the API shows an owner: their registrations and deliveries, page by page, and a
delivery's attempts; another owner's are as missing as ones that never existed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from ..errors import NotFound
from .rows import PagePosition
from .tables import TEST_MODE, Attempt, Delivery, DeliveryStatus, Registration


def list_registrations(
    session: Session,
    *,
    owner: str,
    topic: str | None,
    after: PagePosition | None,
    limit: int,
) -> Sequence[Registration]:
    """Up to ``limit`` of the owner's registrations, oldest first, after ``after``."""
    query = select(Registration).where(Registration.owner == owner)
    if topic is not None:
        query = query.where(Registration.topic == topic)
    if after is not None:
        query = query.where(_past(Registration, after, later=True))
    query = query.order_by(Registration.created_at, Registration.id).limit(limit)
    return session.scalars(query).all()


def list_deliveries(
    session: Session,
    *,
    owner: str,
    registration_id: str,
    before: PagePosition | None,
    limit: int,
    status: str | None = None,
) -> Sequence[Delivery]:
    """Up to ``limit`` deliveries of one registration, newest first, older than ``before``;
    only those in ``status`` if given."""
    query = select(Delivery).where(
        Delivery.owner == owner, Delivery.registration_id == registration_id
    )
    if status is not None:
        query = query.where(Delivery.status == status)
    if before is not None:
        query = query.where(_past(Delivery, before, later=False))
    query = query.order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit)
    return session.scalars(query).all()


def feed(
    session: Session,
    *,
    owner: str,
    registration_id: str,
    after: PagePosition | None,
    until: datetime,
    limit: int,
) -> Sequence[Delivery]:
    """Up to ``limit`` deliveries of one registration in the order they were made, after
    ``after``, made before ``until``; tests left out, but for those stored for a pull-only
    registration (which nothing else shows its receiver)."""
    query = select(Delivery).where(
        Delivery.owner == owner,
        Delivery.registration_id == registration_id,
        Delivery.created_at < until,
        or_(Delivery.mode != TEST_MODE, Delivery.status == DeliveryStatus.STORED),
    )
    if after is not None:
        query = query.where(_past(Delivery, after, later=True))
    query = query.order_by(Delivery.created_at, Delivery.id).limit(limit)
    return session.scalars(query).all()


def latest_delivery(session: Session, registration_id: str) -> Delivery | None:
    """The newest delivery of a registration, if it has any."""
    query = (
        select(Delivery)
        .where(Delivery.registration_id == registration_id)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def _past(
    table: type[Registration] | type[Delivery], position: PagePosition, *, later: bool
) -> ColumnElement[bool]:
    """Rows after ``position`` in (created_at, id) order: later ones, or earlier ones."""
    if later:
        return or_(
            table.created_at > position.created_at,
            and_(table.created_at == position.created_at, table.id > position.id),
        )
    return or_(
        table.created_at < position.created_at,
        and_(table.created_at == position.created_at, table.id < position.id),
    )


def get_delivery(session: Session, *, owner: str, delivery_id: str) -> Delivery:
    """The owner's delivery, or :class:`NotFound`."""
    delivery = session.scalars(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.owner == owner)
    ).one_or_none()
    if delivery is None:
        raise NotFound("No such delivery.")
    return delivery


def attempts_of(session: Session, delivery_id: str) -> Sequence[Attempt]:
    """Every attempt of a delivery, first first."""
    return session.scalars(
        select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(Attempt.number)
    ).all()
