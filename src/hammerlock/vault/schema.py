"""The vault database's schema: forward-only DDL steps and a one-row version table.

The vault keeps its schema apart from the API's Alembic chain on purpose (it is another database,
often on another host, migrated by another process): ``vault_schema`` holds the version, each step
below moves it up by one, and nothing ever moves it down. Steps run in one transaction; on
PostgreSQL an advisory lock (and on SQLite ``BEGIN IMMEDIATE``) lets one of several starting
vault processes migrate while the others wait.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hammerlock.db.engine import Database
from hammerlock.vault.storage import (
    metadata,
    vault_audit_outbox,
    vault_cards,
    vault_keys,
    vault_schema,
)

__all__ = ["SCHEMA_VERSION", "migrate_vault", "vault_schema_version"]

_ADVISORY_LOCK_KEY = 0x7661756C  # "vaul"


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[vault_cards, vault_keys, vault_audit_outbox])


# Append only: step N brings the schema from N-1 to N.
_STEPS: tuple[Callable[[Connection], None], ...] = (_v1,)
SCHEMA_VERSION = len(_STEPS)


def _current(conn: Connection) -> int:
    if not sa.inspect(conn).has_table(vault_schema.name):
        return 0
    version = conn.execute(sa.select(vault_schema.c.version).where(vault_schema.c.id == 1)).scalar()
    return int(version or 0)


def _upgrade(conn: Connection, now_us: int) -> tuple[int, int]:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
    metadata.create_all(conn, tables=[vault_schema])
    before = _current(conn)
    if before > SCHEMA_VERSION:
        raise RuntimeError(
            f"the vault database is at schema {before}, newer than this release ({SCHEMA_VERSION})"
        )
    for step in _STEPS[before:]:
        step(conn)
    values = {"version": SCHEMA_VERSION, "updated_us": now_us}
    if before == 0:
        conn.execute(vault_schema.insert(), [{"id": 1, **values}])
    elif before < SCHEMA_VERSION:
        conn.execute(vault_schema.update().where(vault_schema.c.id == 1).values(**values))
    return before, SCHEMA_VERSION


async def migrate_vault(db: Database) -> tuple[int, int]:
    """Bring the vault schema to :data:`SCHEMA_VERSION`; returns ``(before, after)``."""
    now_us = db.clock.now_us()
    async with db.engine.connect() as conn:
        await conn.execution_options(hammerlock_write=True)
        async with conn.begin():
            return await conn.run_sync(_upgrade, now_us)


async def vault_schema_version(db: Database) -> int:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)
