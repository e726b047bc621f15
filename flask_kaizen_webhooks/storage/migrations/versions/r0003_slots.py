"""Add kaizen_webhook_slots: each process's share of the caps on attempts in flight, so that the
caps hold across processes.

A host's ``db.create_all()`` (the tables are in ``db.metadata``) may have made the table before
this revision runs: then it is left as it is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "kaizen_webhook_slots"


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table(TABLE):
        return
    op.create_table(
        TABLE,
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("wanted", sa.Integer(), nullable=False),
        sa.Column("timing_out", sa.Boolean(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", "holder", name=f"pk_{TABLE}"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
