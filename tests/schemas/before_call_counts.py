"""Test data: the extension's tables as ``metadata.create_all`` made them in the release before
``kaizen_webhook_call_counts`` (``flask_kaizen_webhooks/models.py`` at ``faaedb6^``), on a
metadata of their own: what revision 0001 must match, and what an install of that release has."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def moment(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


registrations = Table(
    "kaizen_webhook_registrations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("topic", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("url_digest", String(64), nullable=False),
    Column("secret", Text, nullable=False),
    Column("secret_version", Integer, nullable=False),
    Column("previous_secret", Text),
    moment("previous_secret_until", nullable=True),
    Column("rev", String(64), nullable=False),
    Column("rev_number", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    moment("created_at"),
    moment("updated_at"),
    Column("consecutive_failures", Integer, nullable=False),
    moment("failing_since", nullable=True),
    Column("disabled_reason", Text),
    UniqueConstraint("owner", "topic", "url_digest", name="uq_kaizen_webhook_registration"),
    Index("ix_kaizen_webhook_registrations_listing", "owner", "created_at", "id"),
    Index("ix_kaizen_webhook_registrations_topic", "topic", "state"),
)

deliveries = Table(
    "kaizen_webhook_deliveries",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("registration_id", String(36), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("topic", String(64), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("retry_index", Integer, nullable=False),
    moment("next_attempt_at", nullable=True),
    Column("claim_token", String(36)),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("response_excerpt", Text),
    moment("created_at"),
    moment("updated_at"),
    moment("completed_at", nullable=True),
    Index("ix_kaizen_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_kaizen_webhook_deliveries_registration", "registration_id", "created_at", "id"),
)

events = Table(
    "kaizen_webhook_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("topic", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("recipients", Text, nullable=False),
    moment("created_at"),
)

attempts = Table(
    "kaizen_webhook_attempts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("delivery_id", String(36), nullable=False),
    Column("number", Integer, nullable=False),
    moment("started_at"),
    Column("elapsed", Float, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("response_excerpt", Text),
    Index("ix_kaizen_webhook_attempts_delivery", "delivery_id", "number"),
)
