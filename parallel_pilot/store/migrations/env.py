"""Alembic environment: migrations run on a connection handed over by ``store.database``."""

from __future__ import annotations

from alembic import context

from parallel_pilot.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through ``store.database.migrate``
    raise RuntimeError("run migrations through parallel_pilot.store.database.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
