"""The unit of work: one database transaction per business event.

A service function takes a :class:`UnitOfWork`, changes state, posts ledger transfers and records
audit events through ``uow.conn``; they all commit together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from hammerlock.clock import Clock

__all__ = ["UnitOfWork"]


@dataclass(slots=True)
class UnitOfWork:
    conn: AsyncConnection
    dialect: str  # "sqlite" | "postgresql"
    clock: Clock

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"
