"""Alembic environment for the service database (run by ``slmtune.service.migrations``, never by hand).

The caller passes an open connection inside a transaction (``config.attributes["connection"]``): every revision of
one upgrade runs in that transaction, so on PostgreSQL a failing migration leaves the database at its old revision.
SQLite ALTERs go through batch mode (copy-and-move), which SQLite needs for anything past ADD COLUMN.
"""

from alembic import context

from slmtune.service.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
with context.begin_transaction():
    context.run_migrations()
