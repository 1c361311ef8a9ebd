"""Concurrent writers on PostgreSQL: 8 workers post random requests (single transfers, linked
chains, holds with timeouts, partial posts and voids racing for the same holds, ids reused across
workers) among 20 accounts, half of them limited, while the ledger clock moves and a sweeper
expires holds. Each worker either runs every request in its own transaction
(``run_with_retries``) or submits it to the started group-commit ``LedgerWriter``.

Afterwards: no exception reached any caller (deadlocks, serialization failures and id races are
the ledger's to retry), every id was accepted at most once, every hold resolved at most once, no
limit is broken, ``run_check`` is clean, and every account's balances equal exactly what the
``ok`` results add up to.

A third variant calls ``ledger.post`` inside plain transactions with no retry at all, as domain
services do: the ledger's lock order alone must keep it free of deadlocks.

The full size from the issue (8 workers x 2,000 transfers) is marked slow; the default run is
8 x 300.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.ledger import service
from hammerlock.ledger.check import run_check
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    Balances,
    TransferFlag,
    TransferInput,
)
from hammerlock.ledger.service import LedgerRequest
from hammerlock.ledger.writer import run_with_retries

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("backend", ["postgresql"], indirect=True),
]

WORKERS = 8
FREE = [f"free{i:02d}" for i in range(10)]
LIMITED = [f"lim{i:02d}" for i in range(10)]  # debits_must_not_exceed_credits
ACCOUNTS = FREE + LIMITED
SHARED_EVERY = 7  # every 7th request of each worker reuses one id all workers send
CLOCK_STEP_S = 0.005  # ledger time each request moves the clock by
SEED = int(os.environ.get("LEDGER_CONCURRENCY_SEED", "20260101"))

Submit = Callable[[list[TransferInput]], Awaitable[list[str]]]


@dataclass
class Journal:
    """What the callers were told, to recompute the balances from the `ok` answers alone."""

    sent: list[tuple[list[TransferInput], list[str]]] = field(default_factory=list)
    holds: list[str] = field(default_factory=list)  # accepted holds, for others to race over

    def accepted(self) -> list[TransferInput]:
        return [t for ts, rs in self.sent for t, r in zip(ts, rs, strict=True) if r == "ok"]


def _transfer(rng: random.Random, tid: str, **kw: object) -> TransferInput:
    debit, credit = rng.sample(ACCOUNTS, 2)
    return TransferInput(tid, debit, credit, rng.randint(1, 100), "USD", "pay", **kw)  # type: ignore[arg-type]


def _request(
    rng: random.Random, worker: int, n: int, journal: Journal, *, shared_ids: bool
) -> list[TransferInput]:
    tid = f"w{worker}.{n}"
    if shared_ids and n % SHARED_EVERY == 0:  # every worker sends this id at about the same time
        return [_transfer(rng, f"shared.{n}")]
    roll = rng.random()
    if roll < 0.30:
        return [_transfer(rng, tid)]
    if roll < 0.45:  # a linked chain of 2-3, e.g. through a limited account
        size = rng.randint(2, 3)
        chain = [_transfer(rng, f"{tid}.{k}", flags=TransferFlag.LINKED) for k in range(size)]
        chain[-1] = _transfer(rng, f"{tid}.{size - 1}")
        return chain
    if roll < 0.65:
        timeout_s = rng.choice((0, 0, 1, 2, 3))
        return [_transfer(rng, tid, flags=TransferFlag.PENDING, timeout_s=timeout_s)]
    if journal.holds:
        hold = rng.choice(journal.holds[-30:])  # recent holds: workers race to resolve them
        flags = rng.choice((TransferFlag.POST_PENDING, TransferFlag.VOID_PENDING))
        amount = (
            rng.choice((None, rng.randint(1, 60))) if flags is TransferFlag.POST_PENDING else None
        )
        return [TransferInput(tid, None, None, amount, None, None, flags, pending_id=hold)]
    return [_transfer(rng, tid)]


async def _worker(
    worker: int,
    transfers: int,
    submit: Submit,
    journal: Journal,
    clock: FixedClock,
    *,
    shared_ids: bool,
) -> None:
    rng = random.Random(SEED * 100 + worker)
    done, n = 0, 0
    while done < transfers:
        request = _request(rng, worker, n, journal, shared_ids=shared_ids)
        results = await submit(request)
        journal.sent.append((request, results))
        for t, r in zip(request, results, strict=True):
            if r == "ok" and TransferFlag.PENDING in t.flags:
                journal.holds.append(t.id)
        clock.advance(CLOCK_STEP_S)
        done += len(request)
        n += 1


async def _sweeper(container: Container, stop: asyncio.Event) -> None:
    while not stop.is_set():
        async with container.db.transaction() as uow:
            await service.sweep_expired_holds(uow)
        await asyncio.sleep(0.02)


async def _open_accounts(container: Container) -> None:
    accounts = [
        AccountInput(a, "USD", "wallet", AccountFlag(0) if a in FREE else _LIMIT, "{}")
        for a in ACCOUNTS
    ]
    async with container.db.transaction() as uow:
        await service.create_accounts(uow, None, accounts)


_LIMIT = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS


def _sides(t: TransferInput) -> tuple[str, str, int]:
    """A created transfer's accounts and amount (the workers always give all three)."""
    if t.debit_account_id is None or t.credit_account_id is None or t.amount is None:
        raise AssertionError(f"incomplete transfer {t}")
    return t.debit_account_id, t.credit_account_id, t.amount


def _expected(journal: Journal) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Balances ([dp, dpo, cp, cpo]) and hold states implied by the `ok` answers, once every
    timed hold has expired."""
    balances = {a: [0, 0, 0, 0] for a in ACCOUNTS}
    holds: dict[str, tuple[str, str, int]] = {}
    states: dict[str, str] = {}
    resolving = TransferFlag.POST_PENDING | TransferFlag.VOID_PENDING
    accepted = journal.accepted()
    for t in accepted:
        if t.flags & resolving:
            continue
        debit, credit, amount = _sides(t)
        if TransferFlag.PENDING in t.flags:
            holds[t.id] = (debit, credit, amount)
            states[t.id] = "pending" if t.timeout_s == 0 else "expired"
        else:
            balances[debit][1] += amount
            balances[credit][3] += amount
    for t in accepted:  # in the order the callers heard of them: a hold before its resolution
        if not t.flags & resolving:
            continue
        hold_id = t.pending_id or ""
        assert states[hold_id] in ("pending", "expired"), f"{hold_id} resolved twice"
        states[hold_id] = "voided"
        if TransferFlag.POST_PENDING in t.flags:
            states[hold_id] = "posted"
            debit, credit, held = holds[hold_id]
            balances[debit][1] += held if t.amount is None else t.amount
            balances[credit][3] += held if t.amount is None else t.amount
    for hold_id, state in states.items():
        if state == "pending":
            debit, credit, held = holds[hold_id]
            balances[debit][0] += held
            balances[credit][2] += held
    return balances, states


async def _run(
    container: Container,
    clock: FixedClock,
    transfers: int,
    submit: Submit,
    *,
    shared_ids: bool = True,
) -> Journal:
    await _open_accounts(container)
    journal = Journal()
    stop = asyncio.Event()
    sweeper = asyncio.create_task(_sweeper(container, stop))
    try:
        await asyncio.gather(
            *(
                _worker(w, transfers, submit, journal, clock, shared_ids=shared_ids)
                for w in range(WORKERS)
            )
        )
    finally:
        stop.set()
        await sweeper  # re-raises whatever the sweeper hit
    clock.advance(60)
    async with container.db.transaction() as uow:
        await service.sweep_expired_holds(uow, limit=100_000)
    return journal


async def _assert_consistent(
    container: Container, journal: Journal, *, shared_ids: bool = True
) -> None:
    results = Counter(r for _, rs in journal.sent for r in rs)
    assert results["ok"] > 0
    assert results["exceeds_credits"] > 0, results  # the limits did bite
    if shared_ids:  # the ids did collide
        assert any(r.startswith("exists_with_different_") for r in results), results
    assert (
        results["pending_transfer_already_posted"] + results["pending_transfer_already_voided"] > 0
    )
    ok_per_id = Counter(t.id for t in journal.accepted())
    assert max(ok_per_id.values()) == 1, "an id was accepted twice"

    expected, hold_states = _expected(journal)
    async with container.db.transaction(write=False) as uow:
        rows = (
            await uow.conn.execute(
                sa.text(
                    "SELECT id, flags, debits_pending, debits_posted, credits_pending, "
                    "credits_posted FROM ledger_accounts"
                )
            )
        ).all()
        stored_ids = {
            r.id: r.amount
            for r in await uow.conn.execute(sa.text("SELECT id, amount FROM ledger_transfers"))
        }
        stored_holds = {
            r.transfer_id: r.state
            for r in await uow.conn.execute(sa.text("SELECT transfer_id, state FROM ledger_holds"))
        }
    got = {
        r.id: [r.debits_pending, r.debits_posted, r.credits_pending, r.credits_posted] for r in rows
    }
    assert got == expected
    for r in rows:
        if AccountFlag(r.flags) & _LIMIT:
            assert r.debits_pending + r.debits_posted <= r.credits_posted, r
    assert set(stored_ids) == set(ok_per_id)
    assert stored_holds == hold_states
    report = await run_check(container.db)
    assert report.ok, report.lines()


SIZES = [300, pytest.param(2_000, marks=pytest.mark.slow, id="2000-full")]


@pytest.mark.parametrize("transfers", SIZES)
async def test_concurrent_transactions_keep_the_ledger_whole(
    container: Container, clock: FixedClock, transfers: int
) -> None:
    async def submit(request: list[TransferInput]) -> list[str]:
        [results] = await run_with_retries(container.db, [LedgerRequest(request, None)])
        return results

    journal = await _run(container, clock, transfers, submit)
    await _assert_consistent(container, journal)


@pytest.mark.parametrize("transfers", SIZES)
async def test_concurrent_submissions_through_group_commit_keep_the_ledger_whole(
    container: Container, clock: FixedClock, transfers: int
) -> None:
    writer = container.ledger_writer  # started by the container (group commit is on)

    async def submit(request: list[TransferInput]) -> list[str]:
        return await writer.submit(LedgerRequest(request, None))

    journal = await _run(container, clock, transfers, submit)
    await _assert_consistent(container, journal)
    # (an unstarted writer runs each request alone and counts nothing: 0 < 0 fails too)
    assert writer.batches < writer.requests, "no two requests ever shared a commit"


@pytest.mark.parametrize("transfers", SIZES)
async def test_concurrent_service_calls_without_retries_never_deadlock(
    container: Container, clock: FixedClock, transfers: int
) -> None:
    """``ledger.post`` inside a domain service's own transaction, with no retry around it: the
    ledger's locks alone must keep concurrent callers from deadlocking (ids are unique here, as
    domain services make them)."""

    async def submit(request: list[TransferInput]) -> list[str]:
        async with container.db.transaction() as uow:
            return await service.post(uow, request)

    journal = await _run(container, clock, transfers, submit, shared_ids=False)
    await _assert_consistent(container, journal, shared_ids=False)


async def _wait_until_blocked_on_locks(container: Container, waiting: int) -> None:
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(500):
        async with container.db.transaction(write=False) as uow:
            if (await uow.conn.execute(query)).scalar_one() >= waiting:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {waiting} transactions waiting for a lock")


async def test_a_hold_committed_while_a_batch_waits_for_its_locks_is_posted_without_deadlock(
    container: Container,
) -> None:
    """A batch reads which accounts it needs before locking them. Here the hold it posts is
    committed (by A) only while the batch (B) waits for its locks, so B learns of the hold's
    other account (lim00, sorting before the lim05 it holds) only under its locks. Meanwhile
    C, a batch on lim00 and lim05, holds lim00 and waits for lim05. Locking lim00 now, out
    of order, would deadlock B against C (and, with no retry around these calls, fail one of
    them); B must give its locks back and take all of them again, in order. (Accounts with a
    limit: those are the ones a batch locks when it reads them; unconstrained ones are locked
    only at commit, ADR 0016.)"""
    await _open_accounts(container)
    async with container.db.transaction() as uow:
        funding = [
            TransferInput(f"fund.{a}", "free01", a, 100, "USD", "fund") for a in ("lim00", "lim05")
        ]
        assert await service.post(uow, funding) == ["ok", "ok"]
    hold = TransferInput("h", "lim05", "lim00", 40, "USD", "pay", TransferFlag.PENDING)
    post = TransferInput("p", None, None, None, None, None, TransferFlag.POST_PENDING, "h")
    held = asyncio.Event()
    release = asyncio.Event()

    async def a() -> None:
        async with container.db.transaction() as uow:
            assert await service.post(uow, [hold]) == ["ok"]
            held.set()
            await release.wait()  # lim00 and lim05 stay locked, the hold uncommitted

    async def batch(*transfers: TransferInput) -> list[str]:
        await held.wait()
        async with container.db.transaction() as uow:
            return await service.post(uow, list(transfers))

    holder = asyncio.create_task(a())
    b = asyncio.create_task(batch(TransferInput("tb", "lim05", "free06", 5, "USD", "pay"), post))
    try:
        await held.wait()
        await _wait_until_blocked_on_locks(container, 1)
        c = asyncio.create_task(batch(TransferInput("tc", "lim00", "lim05", 7, "USD", "pay")))
        await _wait_until_blocked_on_locks(container, 2)
    finally:
        release.set()
    await holder
    assert await asyncio.wait_for(b, 30) == ["ok", "ok"]
    assert await asyncio.wait_for(c, 30) == ["ok"]
    async with container.db.transaction(write=False) as uow:
        lim00 = await service.get_account(uow, "lim00")
    assert lim00.balances == Balances(0, 7, 0, 140)
    assert (await run_check(container.db)).ok


async def test_concurrent_creations_of_one_account_answer_ok_once_and_exists_after(
    container: Container,
) -> None:
    """Regression: the losers of the race to insert one id got a unique-violation error (a 500
    through the API) instead of a per-item result."""
    plain = AccountInput("same", "USD", "wallet", AccountFlag(0), "{}")
    other = AccountInput("same", "USD", "escrow", AccountFlag(0), "{}")
    go = asyncio.Event()

    async def create(account: AccountInput) -> str:
        await go.wait()
        async with container.db.transaction() as uow:
            first, again = await service.create_accounts(uow, None, [account, account])
        # the repeat within the request answers as the first would have to a retry
        assert again.result == ("exists" if first.result == "ok" else first.result)
        return first.result

    tasks = [asyncio.create_task(create(a)) for a in [plain, other] * 4]
    await asyncio.sleep(0)
    go.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 1, results
    async with container.db.transaction(write=False) as uow:
        winner = await service.get_account(uow, "same")
    loser_code = "escrow" if winner.code == "wallet" else "wallet"
    for account, result in zip([plain, other] * 4, results, strict=True):
        if result != "ok":
            expected = "exists" if account.code == winner.code else "exists_with_different_code"
            assert result == expected, (account, loser_code, results)
