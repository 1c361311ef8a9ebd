"""Alembic environment: migrations always run on a connection handed in by ``db.migrate``."""

from __future__ import annotations

from alembic import context

from hammerlock.db.metadata import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - guarded by db.migrate
    raise RuntimeError("run migrations with `hammerlock migrate`, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
context.run_migrations()
