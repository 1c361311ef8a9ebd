"""Run the Alembic migrations shipped inside the package (``hammerlock migrate``, ``serve``).

Several processes may start at once: on PostgreSQL a transaction-scoped advisory lock lets one of
them migrate while the others wait; on SQLite ``BEGIN IMMEDIATE`` does the same.
"""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from hammerlock.db.engine import Database

__all__ = ["MigrationResult", "current_revision", "head_revision", "migrate"]

_ADVISORY_LOCK_KEY = 0x68616D6D  # "hamm"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("hammerlock.db") / "migrations"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations found in the package")
    return head


class MigrationResult:
    def __init__(self, before: str | None, after: str | None) -> None:
        self.before = before
        self.after = after

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade(conn: Connection) -> MigrationResult:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
    before = _revision(conn)
    cfg = _config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
    return MigrationResult(before, _revision(conn))


async def migrate(db: Database) -> MigrationResult:
    """Bring the schema to head, in one transaction."""
    async with db.engine.connect() as conn:
        await conn.execution_options(hammerlock_write=True)
        async with conn.begin():
            return await conn.run_sync(_upgrade)


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_revision)
