"""Add each registration's delivery options: ``ordering`` (``"none"`` or ``"fifo"``),
``max_per_second`` and the time its next attempt may start under that rate (``paced_until``);
and let ``url`` be null, for registrations that are only read through their feed.

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


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("ordering", sa.String(8), nullable=False, server_default="none"),
        sa.Column("max_per_second", sa.Integer(), nullable=True),
        sa.Column("paced_until", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    found = {column["name"]: column for column in sa.inspect(op.get_bind()).get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for column in _columns():
            if column.name not in found:
                batch.add_column(column)
        if not found["url"]["nullable"]:
            batch.alter_column("url", existing_type=sa.Text(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
        batch.alter_column("url", existing_type=sa.Text(), nullable=False)
