"""Alembic's environment for the extension's own migrations, run by :mod:`.steps`: on the
connection it is given (in that connection's transaction and lock), with the extension's
version table. Not a module to import."""

from alembic import context

from flask_kaizen_webhooks.storage.migrations.names import VERSION_TABLE
from flask_kaizen_webhooks.storage.tables import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    on_version_apply=context.config.attributes["on_version_apply"],
)
with context.begin_transaction():
    context.run_migrations()
