"""What the extension's migrations are called in a database: their version table, the newest
revision, and the filters that keep a host's own Alembic away from the extension's tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table
from sqlalchemy.sql.schema import SchemaItem

from ..tables import metadata

if TYPE_CHECKING:
    from alembic.runtime.environment import NameFilterParentNames, NameFilterType

#: The table recording the revision of the extension's schema; apart from the host's own
#: ``alembic_version``, so the two never mix in one database.
VERSION_TABLE = "kaizen_webhooks_alembic_version"

#: Every revision, oldest first (a test checks them against the revision files).
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006")

#: The newest revision: a database stamped with it needs nothing, and that is found without
#: loading Alembic.
HEAD = REVISIONS[-1]

#: Called with each revision applied: (from, to, what it does).
OnStep = Callable[[str | None, str | None, str], None]

#: Every table of the extension is named so; a host's tables must not be.
TABLE_PREFIX = "kaizen_webhook_"

#: The version table as Alembic makes it (``MigrationContext``): the automatic set-up of a new
#: database creates and stamps it without loading Alembic.
VERSION = Table(
    VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)


def is_extension_table(name: str | None) -> bool:
    """True for the extension's tables (those of this release or any other) and its version
    table."""
    return name is not None and (
        name in metadata.tables or name == VERSION_TABLE or name.startswith(TABLE_PREFIX)
    )


def include_name(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """Alembic's ``include_name`` for a host's ``env.py``: the extension's tables in the
    database are not looked at (their migrations are the extension's own)."""
    return type_ != "table" or not is_extension_table(name)


def include_object(
    object: SchemaItem,
    name: str | None,
    type_: NameFilterType,
    reflected: bool,
    compare_to: SchemaItem | None,
) -> bool:
    """Alembic's ``include_object`` for a host's ``env.py``: the extension's tables (and their
    columns, indexes and constraints) are left out of autogenerate, whether they are in the
    database or in the host's metadata (``KaizenWebhooks(app, db=db)`` adds them to
    ``db.metadata``)."""
    if type_ == "table":
        return not is_extension_table(name)
    table = getattr(object, "table", None)
    return not isinstance(table, Table) or not is_extension_table(table.name)
