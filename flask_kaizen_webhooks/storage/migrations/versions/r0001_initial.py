"""The registrations, deliveries, events and attempts tables.

The schema as ``metadata.create_all`` made it before the per-owner call counts. A database made
without migrations by an earlier release is run through it too: it makes the tables missing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

MOMENT = sa.DateTime(timezone=True)


def _missing(table: str) -> bool:
    """True unless the table exists already: a database made without migrations by an earlier
    release may lack some of these tables and have the others, which are kept as they are."""
    return not sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if _missing("kaizen_webhook_registrations"):
        op.create_table(
            "kaizen_webhook_registrations",
            sa.Column("id", sa.String(36), nullable=False),
            sa.Column("owner", sa.String(255), nullable=False),
            sa.Column("topic", sa.String(64), nullable=False),
            sa.Column("url", sa.Text(), nullable=False),
            sa.Column("url_digest", sa.String(64), nullable=False),
            sa.Column("secret", sa.Text(), nullable=False),
            sa.Column("secret_version", sa.Integer(), nullable=False),
            sa.Column("previous_secret", sa.Text(), nullable=True),
            sa.Column("previous_secret_until", MOMENT, nullable=True),
            sa.Column("rev", sa.String(64), nullable=False),
            sa.Column("rev_number", sa.Integer(), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("created_at", MOMENT, nullable=False),
            sa.Column("updated_at", MOMENT, nullable=False),
            sa.Column("consecutive_failures", sa.Integer(), nullable=False),
            sa.Column("failing_since", MOMENT, nullable=True),
            sa.Column("disabled_reason", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id", name="pk_kaizen_webhook_registrations"),
            sa.UniqueConstraint(
                "owner", "topic", "url_digest", name="uq_kaizen_webhook_registration"
            ),
        )
        op.create_index(
            "ix_kaizen_webhook_registrations_listing",
            "kaizen_webhook_registrations",
            ["owner", "created_at", "id"],
        )
        op.create_index(
            "ix_kaizen_webhook_registrations_topic",
            "kaizen_webhook_registrations",
            ["topic", "state"],
        )
    if _missing("kaizen_webhook_deliveries"):
        op.create_table(
            "kaizen_webhook_deliveries",
            sa.Column("id", sa.String(36), nullable=False),
            sa.Column("registration_id", sa.String(36), nullable=False),
            sa.Column("owner", sa.String(255), nullable=False),
            sa.Column("topic", sa.String(64), nullable=False),
            sa.Column("mode", sa.String(8), nullable=False),
            sa.Column("payload", sa.Text(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("retry_index", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", MOMENT, nullable=True),
            sa.Column("claim_token", sa.String(36), nullable=True),
            sa.Column("last_status_code", sa.Integer(), nullable=True),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("response_excerpt", sa.Text(), nullable=True),
            sa.Column("created_at", MOMENT, nullable=False),
            sa.Column("updated_at", MOMENT, nullable=False),
            sa.Column("completed_at", MOMENT, nullable=True),
            sa.PrimaryKeyConstraint("id", name="pk_kaizen_webhook_deliveries"),
        )
        op.create_index(
            "ix_kaizen_webhook_deliveries_due",
            "kaizen_webhook_deliveries",
            ["status", "next_attempt_at"],
        )
        op.create_index(
            "ix_kaizen_webhook_deliveries_registration",
            "kaizen_webhook_deliveries",
            ["registration_id", "created_at", "id"],
        )
    if _missing("kaizen_webhook_events"):
        op.create_table(
            "kaizen_webhook_events",
            sa.Column("id", sa.String(36), nullable=False),
            sa.Column("topic", sa.String(64), nullable=False),
            sa.Column("document", sa.Text(), nullable=False),
            sa.Column("recipients", sa.Text(), nullable=False),
            sa.Column("created_at", MOMENT, nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_kaizen_webhook_events"),
        )
    if _missing("kaizen_webhook_attempts"):
        op.create_table(
            "kaizen_webhook_attempts",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                autoincrement=True,
                nullable=False,
            ),
            sa.Column("delivery_id", sa.String(36), nullable=False),
            sa.Column("number", sa.Integer(), nullable=False),
            sa.Column("started_at", MOMENT, nullable=False),
            sa.Column("elapsed", sa.Float(), nullable=False),
            sa.Column("status_code", sa.Integer(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("response_excerpt", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id", name="pk_kaizen_webhook_attempts"),
        )
        op.create_index(
            "ix_kaizen_webhook_attempts_delivery",
            "kaizen_webhook_attempts",
            ["delivery_id", "number"],
        )


def downgrade() -> None:
    for table in (
        "kaizen_webhook_attempts",
        "kaizen_webhook_events",
        "kaizen_webhook_deliveries",
        "kaizen_webhook_registrations",
    ):
        op.drop_table(table)
