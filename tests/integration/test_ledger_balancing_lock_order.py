"""Two ledger batches never deadlock on each other (ADR 0016), balancing transfers included.
(Found in review: the balancing side used to be write-locked with the limited accounts.)

A balancing transfer's read side is write-locked when the batch reads it (with the limited
accounts, in id order); another batch that names the same account as an unconstrained one
write-locks it only at commit, *after* its limited accounts. So:

- T2 posts ``x -> lim`` (lim limited: write-locked now; x unconstrained: share-locked now,
  write-locked at commit) and stays open;
- T1 posts a BALANCING_DEBIT ``x -> lim``: had it locked {x, lim} in id order — x (compatible
  with T2's share lock), then lim (held by T2): waits —
- T2's commit would want x for writing, held by T1: a deadlock. T1 must lock x after lim.
"""

from __future__ import annotations

import asyncio

import pytest

from hammerlock.bootstrap import Container
from hammerlock.ledger import service as ledger
from hammerlock.ledger.model import AccountFlag, AccountInput, TransferFlag, TransferInput
from tests.integration.test_ledger_concurrency import _wait_until_blocked_on_locks

on_postgres = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


_PLAIN = TransferFlag(0)


def _pay(tid: str, dr: str, cr: str, amount: int, flags: TransferFlag = _PLAIN) -> TransferInput:
    return TransferInput(tid, dr, cr, amount, "USD", "pay", flags)


@on_postgres
@pytest.mark.postgres
async def test_balancing_batch_and_plain_batch_do_not_deadlock(container: Container) -> None:
    new = [
        AccountInput("a_x", "USD", "wallet", AccountFlag(0), "{}"),  # sorts before b_lim
        AccountInput("b_lim", "USD", "wallet", AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS, "{}"),
        AccountInput("fund", "USD", "wallet", AccountFlag(0), "{}"),
    ]
    async with container.db.transaction() as uow:
        await ledger.create_accounts(uow, None, new, public=False)
        assert await ledger.post(uow, [_pay("f", "fund", "a_x", 100)]) == ["ok"]

    t2_posted, t2_release = asyncio.Event(), asyncio.Event()

    async def t2() -> list[str]:
        async with container.db.transaction() as uow:
            r = await ledger.post(uow, [_pay("t2", "a_x", "b_lim", 10)])
            t2_posted.set()
            await t2_release.wait()
            return r

    async def t1() -> list[str]:
        async with container.db.transaction() as uow:
            return await ledger.post(
                uow, [_pay("t1", "a_x", "b_lim", 50, TransferFlag.BALANCING_DEBIT)]
            )

    task2 = asyncio.create_task(t2())
    await asyncio.wait_for(t2_posted.wait(), 5)
    task1 = asyncio.create_task(t1())
    await _wait_until_blocked_on_locks(container, 1)  # T1 waits for b_lim
    t2_release.set()
    outcomes = await asyncio.gather(task1, task2, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, f"two batches deadlocked: {errors!r}"
    assert outcomes == [["ok"], ["ok"]]


@on_postgres
@pytest.mark.postgres
async def test_unconstrained_balancing_side_and_plain_batch_do_not_deadlock(
    container: Container,
) -> None:
    """(Second review.) T1: BALANCING_DEBIT b_bal → fund and a plain a_u → fund, all without
    limits. Had T1 locked only b_bal when reading it (a_u at commit), T2 (a_u → b_bal, taking
    a_u then b_bal at its commit) and T1's commit would take the two in opposite orders."""
    new = [
        AccountInput("a_u", "USD", "wallet", AccountFlag(0), "{}"),  # sorts before b_bal
        AccountInput("b_bal", "USD", "wallet", AccountFlag(0), "{}"),
        AccountInput("fund", "USD", "wallet", AccountFlag(0), "{}"),
    ]
    async with container.db.transaction() as uow:
        await ledger.create_accounts(uow, None, new, public=False)
        assert await ledger.post(uow, [_pay("f", "fund", "b_bal", 100)]) == ["ok"]

    t1_posted, t1_release = asyncio.Event(), asyncio.Event()

    async def t1() -> list[str]:
        async with container.db.transaction() as uow:
            r = await ledger.post(
                uow,
                [
                    _pay("t1b", "b_bal", "fund", 50, TransferFlag.BALANCING_DEBIT),
                    _pay("t1p", "a_u", "fund", 1),
                ],
            )
            t1_posted.set()
            await t1_release.wait()
            return r

    async def t2() -> list[str]:
        async with container.db.transaction() as uow:
            return await ledger.post(uow, [_pay("t2", "a_u", "b_bal", 5)])

    task1 = asyncio.create_task(t1())
    await asyncio.wait_for(t1_posted.wait(), 5)
    task2 = asyncio.create_task(t2())
    await _wait_until_blocked_on_locks(container, 1)  # T2's commit: a_u taken, waits for b_bal
    t1_release.set()
    outcomes = await asyncio.gather(task1, task2, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, f"two batches deadlocked: {errors!r}"
