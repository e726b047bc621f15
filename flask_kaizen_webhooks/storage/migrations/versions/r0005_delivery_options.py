"""Add each registration's delivery options: ``ordering`` (``"none"`` or ``"fifo"``),
``max_per_second`` and the time its next attempt may start under that rate (``paced_until``);
let ``url`` be null, for registrations that are only read through their feed; and index the
pending deliveries of each registration in the order they were made.

A host's ``db.create_all()`` may have made the table with these columns before this revision
runs: then the columns it has are left as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "kaizen_webhook_registrations"
DELIVERIES = "kaizen_webhook_deliveries"
PENDING = "ix_kaizen_webhook_deliveries_pending"
PENDING_ONLY = "status = 'pending'"


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("ordering", sa.String(8), nullable=False, server_default="none"),
        sa.Column("max_per_second", sa.Integer(), nullable=True),
        sa.Column("paced_until", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    found = {column["name"]: column for column in inspector.get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for column in _columns():
            if column.name not in found:
                batch.add_column(column)
        if not found["url"]["nullable"]:
            batch.alter_column("url", existing_type=sa.Text(), nullable=True)
    if PENDING not in {index["name"] for index in inspector.get_indexes(DELIVERIES)}:
        op.create_index(
            PENDING,
            DELIVERIES,
            ["registration_id", "created_at", "id"],
            postgresql_where=sa.text(PENDING_ONLY),
            sqlite_where=sa.text(PENDING_ONLY),
        )


def downgrade() -> None:
    op.drop_index(PENDING, table_name=DELIVERIES)
    with op.batch_alter_table(TABLE) as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
        batch.alter_column("url", existing_type=sa.Text(), nullable=False)
