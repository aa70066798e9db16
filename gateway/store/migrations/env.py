"""Alembic environment: the connection is passed in by gateway.store.engine.upgrade."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import gateway.store.tables  # noqa: F401 - registers the tables on SQLModel.metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always run through gateway.store.engine
    raise RuntimeError("run migrations with `tongban db upgrade`")
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
