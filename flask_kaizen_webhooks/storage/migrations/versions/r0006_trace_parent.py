"""Add ``trace_parent`` to deliveries and to events: the W3C ``traceparent`` of the span
current where an asynchronous event was fired, which its attempts' spans join.

A host's ``db.create_all()`` may have made the tables with this column before this revision
runs: then a table that has it is left as it is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

TABLES = ("kaizen_webhook_deliveries", "kaizen_webhook_events")
COLUMN = "trace_parent"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in TABLES:
        if COLUMN in {column["name"] for column in inspector.get_columns(table)}:
            continue
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(COLUMN, sa.String(55), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(COLUMN)
