"""Alembic environment: migrations run on the connection thingward hands over (see registry.db)."""

from __future__ import annotations

from alembic import context

from thingward.registry.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("thingward migrations run through thingward.registry.db.upgrade_database()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
