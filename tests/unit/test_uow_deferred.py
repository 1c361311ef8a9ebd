"""Deferred work (the ledger's writes left for the commit) runs once, before the commit, and
never silently vanishes: a kind of transaction that has no commit of its own refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hammerlock.clock import FixedClock
from hammerlock.db.engine import create_database
from hammerlock.db.uow import UnitOfWork
from hammerlock.settings import Settings


async def _hook(uow: UnitOfWork) -> None:
    uow.deferred.pop("x", None)
    calls = uow.deferred.setdefault("calls", [])
    calls.append(1)


@pytest.mark.parametrize("kind", ["single_statement", "snapshot"])
async def test_deferred_work_in_a_transaction_without_its_own_commit_is_refused(
    tmp_path: Path, kind: str
) -> None:
    db = create_database(
        Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db"),
        FixedClock(),
    )

    async def leave_work() -> None:
        async with getattr(db, kind)() as uow:
            uow.deferred["x"] = object()
            uow.before_commit("x", _hook)

    try:
        with pytest.raises(RuntimeError, match="deferred"):
            await leave_work()
        async with getattr(db, kind)() as uow:  # a hook whose work already ran is fine
            uow.before_commit("y", _hook)
    finally:
        await db.dispose()


async def test_before_commit_hooks_run_once_in_order_and_not_on_rollback(
    tmp_path: Path,
) -> None:
    db = create_database(
        Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db"),
        FixedClock(),
    )
    ran: list[str] = []

    def hook(name: str):  # type: ignore[no-untyped-def]
        async def run(uow: UnitOfWork) -> None:
            del uow
            ran.append(name)

        return run

    try:
        async with db.transaction() as uow:
            uow.before_commit("a", hook("a"))
            uow.before_commit("b", hook("b"))
            uow.before_commit("a", hook("a-again"))  # one per name: the first stays
        assert ran == ["a", "b"]
        ran.clear()

        async def fail() -> None:
            async with db.transaction() as uow:
                uow.before_commit("a", hook("a"))
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await fail()
        assert ran == []
    finally:
        await db.dispose()
