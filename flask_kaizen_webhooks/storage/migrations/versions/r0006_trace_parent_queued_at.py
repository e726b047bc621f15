"""Add ``trace_parent`` to deliveries and to events: the W3C ``traceparent`` of the span
current where an asynchronous event was fired, which its attempts' spans join; and
``queued_at`` to deliveries: when a delivery was last queued (its event fired, or a
redelivery or recovery asked for it), where its latency starts.

A host's ``db.create_all()`` may have made the tables with these columns before this revision
runs: then a column a table has is left as it is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

#: Each table's new columns.
COLUMNS = {
    "kaizen_webhook_deliveries": (
        ("trace_parent", sa.String(55)),
        ("queued_at", sa.DateTime(timezone=True)),
    ),
    "kaizen_webhook_events": (("trace_parent", sa.String(55)),),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, columns in COLUMNS.items():
        present = {column["name"] for column in inspector.get_columns(table)}
        missing = [(name, kind) for name, kind in columns if name not in present]
        if not missing:
            continue
        with op.batch_alter_table(table) as batch:
            for name, kind in missing:
                batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    for table, columns in reversed(COLUMNS.items()):
        with op.batch_alter_table(table) as batch:
            for name, _kind in reversed(columns):
                batch.drop_column(name)
