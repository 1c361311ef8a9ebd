"""Engines for the two supported backends, with their durability settings.

SQLite (embedded default): WAL, ``synchronous=FULL``, foreign keys on, a busy timeout, and
``BEGIN IMMEDIATE`` for writing transactions so two writers queue on the database lock instead of
failing halfway with ``SQLITE_BUSY`` on lock upgrade. PostgreSQL: asyncpg, READ COMMITTED, row locks
taken explicitly by the domains that need them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hammerlock.clock import Clock
from hammerlock.db.uow import UnitOfWork
from hammerlock.settings import Settings

__all__ = ["Database", "create_database"]

_WRITE = "hammerlock_write"


class Database:
    """An engine plus the way this project opens transactions on it."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.dialect: str = engine.dialect.name

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[UnitOfWork]:
        """One transaction; commits on normal exit, rolls back on any exception."""
        async with self.engine.connect() as conn:
            if write:
                await conn.execution_options(**{_WRITE: True})
            async with conn.begin():
                uow = UnitOfWork(conn=conn, dialect=self.dialect, clock=self.clock)
                yield uow
                await uow.run_before_commit()

    @asynccontextmanager
    async def single_statement(self, *, write: bool = True) -> AsyncIterator[UnitOfWork]:
        """For work that is one statement (atomic by itself): no BEGIN/COMMIT round trips.

        On PostgreSQL the connection runs in autocommit, saving two network round trips per use
        (key checks, idempotency leases). On SQLite, where round trips are free, it is an
        ordinary transaction. Never use it for more than one dependent statement.
        """
        async with self._autocommit("single_statement", write=write) as uow:
            yield uow

    @asynccontextmanager
    async def read(self) -> AsyncIterator[UnitOfWork]:
        """Plain reads (no row locks, no writes) that need no snapshot across statements.

        PostgreSQL: each statement in autocommit — exactly what a READ COMMITTED transaction
        gives its statements (each its own snapshot), without the BEGIN and COMMIT round trips
        (half the statements of a one-read transaction). SQLite: a deferred read transaction,
        one snapshot as before. Use :meth:`snapshot` when the reads must agree with each other,
        :meth:`transaction` for anything that locks or writes (ADR 0017).
        """
        async with self._autocommit("read", write=False) as uow:
            yield uow

    @asynccontextmanager
    async def _autocommit(self, kind: str, *, write: bool) -> AsyncIterator[UnitOfWork]:
        """Autocommit on PostgreSQL, a transaction on SQLite; deferred ledger work refused."""
        if not self.is_postgres:
            async with self.transaction(write=write) as uow:
                yield uow
                _refuse_deferred(uow, kind)
            return
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            uow = UnitOfWork(conn=conn, dialect=self.dialect, clock=self.clock)
            yield uow
            _refuse_deferred(uow, kind)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[UnitOfWork]:
        """A read-only transaction in which every statement sees one consistent snapshot.

        PostgreSQL: REPEATABLE READ (READ COMMITTED, the default, gives each statement its own).
        SQLite: a deferred transaction, which under WAL reads one snapshot from its first read.
        For long reads that must not see concurrent writes halfway (``audit verify``).
        """
        if not self.is_postgres:
            async with self.transaction(write=False) as uow:
                yield uow
                _refuse_deferred(uow, "snapshot")
            return
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                uow = UnitOfWork(conn=conn, dialect=self.dialect, clock=self.clock)
                yield uow
                _refuse_deferred(uow, "snapshot")

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _refuse_deferred(uow: UnitOfWork, kind: str) -> None:
    """Work left for a commit that this kind of transaction has no place for (a ledger post
    in autocommit or in a read-only snapshot) is a bug: fail loudly rather than drop it."""
    if uow.has_deferred:
        raise RuntimeError(f"work deferred to the commit of a {kind} transaction")


def create_database(settings: Settings, clock: Clock) -> Database:
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000}
        )
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
    else:
        engine = create_async_engine(
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_recycle=1800,
            pool_timeout=30,
            # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
            # generic plan made while a table was small (a sequential scan on ledger_transfers
            # for `id IN (…)` that never goes away as the table grows). Plan each run instead.
            connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
        )
    return Database(engine, clock)


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit transactions are off).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")
