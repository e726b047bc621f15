"""The extension's own migrations (Alembic, with a version table of its own,
``kaizen_webhooks_alembic_version``, never the host's ``alembic_version``).

An embedded database is brought to head automatically on first use (:func:`bring_to_head`); a
host's database by ``flask webhooks db upgrade`` (:func:`upgrade`). A host's own Alembic or
Flask-Migrate leaves the extension's tables alone with :func:`include_object` and
:func:`include_name` (see ``docs/storage.rst``).

A change to :mod:`..tables` needs a revision: a new ``versions/rNNNN_*.py`` whose
``down_revision`` is the previous head, with ``upgrade()`` and ``downgrade()`` that work on
SQLite (``op.batch_alter_table`` to alter a table) and PostgreSQL, its id appended to
:data:`~.names.REVISIONS`. Tables without a revision go through every revision, so each makes
only what is missing: a table it creates may exist already, and a column it adds or changes may
be so already (a host's ``db.create_all()`` of a later release makes head's tables).
``tests/test_migrations.py`` checks that upgrading from nothing gives exactly the metadata.
"""

from ...errors import SchemaError
from .apply import (
    Found,
    bring_to_head,
    current,
    downgrade,
    drop_all,
    is_at_head,
    locked,
    upgrade,
)
from .names import (
    HEAD,
    REVISIONS,
    VERSION_TABLE,
    OnStep,
    include_name,
    include_object,
    is_extension_table,
)

__all__ = [
    "HEAD",
    "REVISIONS",
    "VERSION_TABLE",
    "Found",
    "OnStep",
    "SchemaError",
    "bring_to_head",
    "current",
    "downgrade",
    "drop_all",
    "include_name",
    "include_object",
    "is_at_head",
    "is_extension_table",
    "locked",
    "upgrade",
]
