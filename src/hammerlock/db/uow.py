"""The unit of work: one database transaction per business event.

A service function takes a :class:`UnitOfWork`, changes state, posts ledger transfers and records
audit events through ``uow.conn``; they all commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from hammerlock.clock import Clock

__all__ = ["UnitOfWork"]


@dataclass(slots=True)
class UnitOfWork:
    conn: AsyncConnection
    dialect: str  # "sqlite" | "postgresql"
    clock: Clock
    # Work a domain left for the end of the transaction (the ledger's writes to unconstrained
    # accounts, ADR 0016), by name; run in order by :meth:`run_before_commit`.
    deferred: dict[str, Any] = field(default_factory=dict)
    _before_commit: dict[str, Callable[[UnitOfWork], Awaitable[None]]] = field(default_factory=dict)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def before_commit(self, name: str, hook: Callable[[UnitOfWork], Awaitable[None]]) -> None:
        """Run ``hook`` once just before this transaction commits (not if it rolls back)."""
        self._before_commit.setdefault(name, hook)

    @property
    def has_deferred(self) -> bool:
        """Work is waiting for the commit (not merely a hook whose work already ran)."""
        return bool(self.deferred)

    async def run_before_commit(self) -> None:
        while self._before_commit:
            name = next(iter(self._before_commit))
            await self._before_commit.pop(name)(self)
