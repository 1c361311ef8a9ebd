"""Unconstrained accounts (no DEBITS_/CREDITS_MUST_NOT_EXCEED_* flag) are not locked by ``post``.

``ledger.post`` decides at once but writes what it decided on unconstrained accounts at the end
of the caller's transaction, just before COMMIT, locking them only then and correcting the
transfer rows' ``debit_after``/``credit_after`` for whatever committed meanwhile. So a hot
account (a gateway, platform revenue) no longer serialises every payment transaction for its
whole length. What must still hold, and what these tests check black-box:

- an open transaction that posted on a hot account does not block another one on it;
- many concurrent transactions (plain, pending, posted, voided) leave exact balances, a clean
  ``run_check`` and, for every account, a statement whose running balances chain;
- a transaction sees its own transfers (``get_account``, ``statement``, a later ``post`` that
  resolves a hold or balances against them);
- a transaction that raises leaves nothing behind;
- an account closed between a post and its commit never receives the transfer after the close.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.ledger import service as ledger
from hammerlock.ledger.check import run_check
from hammerlock.ledger.errors import TransferNotFound
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    Balances,
    TransferFlag,
    TransferInput,
    TransferRecord,
)
from hammerlock.ledger.service import LedgerRequest

on_postgres = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

CTX = Context.system("tests")
FREE = AccountFlag(0)
LIMIT = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS
NO_FLAGS = TransferFlag(0)
HOT = "gateway:test:USD"  # reserved, unconstrained: touched by every payment
BOUND_S = 5.0  # how long a transaction that must not be blocked may take
SETTLE_S = 60.0  # how long anything that may legitimately wait (a commit, a lock) may take
PAGE = 100


async def _open(container: Container, *accounts: tuple[str, AccountFlag]) -> None:
    new = [AccountInput(a, "USD", "wallet", flags, "{}") for a, flags in accounts]
    async with container.db.transaction() as uow:
        results = await ledger.create_accounts(uow, None, new, public=False)
    assert [r.result for r in results] == ["ok"] * len(new)


def _pay(
    tid: str, debit: str, credit: str, amount: int, flags: TransferFlag = NO_FLAGS
) -> TransferInput:
    return TransferInput(tid, debit, credit, amount, "USD", "pay", flags)


def _resolve(tid: str, pending_id: str, flags: TransferFlag, amount: int | None) -> TransferInput:
    return TransferInput(tid, None, None, amount, None, None, flags, pending_id=pending_id)


async def _post_alone(container: Container, transfers: list[TransferInput]) -> list[str]:
    async with container.db.transaction() as uow:
        return await ledger.post(uow, transfers)


async def _balances(container: Container, account_id: str) -> Balances:
    async with container.db.transaction(write=False) as uow:
        return (await ledger.get_account(uow, account_id)).balances


async def _statement(container: Container, account_id: str) -> list[TransferRecord]:
    lines: list[TransferRecord] = []
    after_seq = 0
    async with container.db.transaction(write=False) as uow:
        while page := await ledger.statement(uow, account_id, after_seq=after_seq, limit=PAGE):
            seqs = [seq for seq, _ in page]
            assert seqs == sorted(seqs)
            assert seqs[0] > after_seq
            lines.extend(record for _, record in page)
            after_seq = seqs[-1]
    return lines


async def _assert_check_ok(container: Container) -> None:
    report = await run_check(container.db)
    assert report.ok, report.lines()


class HeldOpen:
    """A transaction that posts ``transfers``, then stays open until :meth:`commit`.

    Always call :meth:`let_go` in a ``finally``: a test that fails halfway must not leave it
    holding locks (or the connection) while the fixtures tear down.
    """

    def __init__(self, container: Container, transfers: list[TransferInput]) -> None:
        self.posted = asyncio.Event()
        self.release = asyncio.Event()
        self.results: list[str] = []
        self.task = asyncio.create_task(self._run(container, transfers))

    async def _run(self, container: Container, transfers: list[TransferInput]) -> None:
        async with container.db.transaction() as uow:
            self.results = await ledger.post(uow, transfers)
            self.posted.set()
            await self.release.wait()

    async def wait_posted(self) -> list[str]:
        waiter = asyncio.create_task(self.posted.wait())
        await asyncio.wait(
            {self.task, waiter}, timeout=BOUND_S, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if self.task.done():
            self.task.result()  # re-raises what the post hit
        assert self.posted.is_set(), f"the post did not return within {BOUND_S} s"
        return self.results

    async def commit(self) -> BaseException | None:
        """Let it commit; returns the exception the commit raised, if any."""
        self.release.set()
        [outcome] = await asyncio.wait_for(
            asyncio.gather(self.task, return_exceptions=True), SETTLE_S
        )
        return outcome if isinstance(outcome, BaseException) else None

    async def let_go(self) -> None:
        self.release.set()
        await asyncio.wait({self.task}, timeout=SETTLE_S)


# --- 1. an open transaction on a hot account does not block another -----------------------


@pytest.mark.parametrize("destination", [FREE, LIMIT], ids=["unconstrained", "constrained"])
@on_postgres
@pytest.mark.postgres
async def test_open_transaction_on_hot_account_does_not_block_another(
    container: Container, destination: AccountFlag
) -> None:
    """T1 posts ``hot → a`` and stays open; T2 posts ``hot → b`` and commits within BOUND_S
    while T1 is still open (with ``post`` locking every account, T2 waits for T1's commit and
    this fails). Then T1 commits, and the hot account holds both. ``a``/``b`` constrained (only
    credited, so always allowed) changes nothing: only they are locked, and they differ."""
    await _open(container, (HOT, FREE), ("a", destination), ("b", destination))
    t1 = HeldOpen(container, [_pay("t1", HOT, "a", 100)])
    try:
        assert await t1.wait_posted() == ["ok"]
        t2 = asyncio.create_task(_post_alone(container, [_pay("t2", HOT, "b", 250)]))
        done, _ = await asyncio.wait({t2}, timeout=BOUND_S)
        t1_open_meanwhile = not t1.task.done()
    finally:
        await t1.let_go()
    t2_results = await asyncio.wait_for(t2, SETTLE_S)  # T1 has committed: T2 can finish now
    assert t2 in done, f"T2 was blocked by the open T1 for more than {BOUND_S} s"
    assert t1_open_meanwhile
    assert t2_results == ["ok"]
    assert await t1.commit() is None
    assert (await _balances(container, HOT)).debits_posted == 350
    assert (await _balances(container, "a")).credits_posted == 100
    assert (await _balances(container, "b")).credits_posted == 250
    await _assert_check_ok(container)


# --- 2. many concurrent transactions: exact sums and chained statements --------------------

TASKS = 16
TRANSACTIONS = 15
FUND = "fund"
FUNDING = 100_000
SEED = 20261205


def _sides(t: TransferInput) -> tuple[str, str, int]:
    """A created transfer's accounts and amount (the tests always give all three)."""
    if t.debit_account_id is None or t.credit_account_id is None or t.amount is None:
        raise AssertionError(f"incomplete transfer {t}")
    return t.debit_account_id, t.credit_account_id, t.amount


@dataclass
class Book:
    """What the tests posted, to recompute balances and statements without the database."""

    balances: dict[str, list[int]] = field(default_factory=dict)  # dp, dpo, cp, cpo
    held: dict[str, int] = field(default_factory=dict)  # pending transfer id -> amount

    def apply(self, t: TransferInput) -> None:
        if t.flags & (TransferFlag.POST_PENDING | TransferFlag.VOID_PENDING):
            return  # resolutions are applied by `resolve`, which knows the hold
        debit, credit, amount = _sides(t)
        dr = self.balances.setdefault(debit, [0, 0, 0, 0])
        cr = self.balances.setdefault(credit, [0, 0, 0, 0])
        slot = 0 if TransferFlag.PENDING in t.flags else 1
        dr[slot] += amount
        cr[slot + 2] += amount
        if TransferFlag.PENDING in t.flags:
            self.held[t.id] = amount

    def resolve(self, hold: TransferInput, posted: int) -> None:
        debit, credit, amount = _sides(hold)
        dr, cr = self.balances[debit], self.balances[credit]
        dr[0] -= amount
        cr[2] -= amount
        dr[1] += posted
        cr[3] += posted


def _chains(lines: list[TransferRecord], account_id: str, held: dict[str, int]) -> Balances:
    """Walks the statement; each line's balance after must be the previous one plus the line's
    effect, starting from zero. Returns the last balance."""
    previous = Balances()
    for n, record in enumerate(lines):
        after = record.debit_after if record.debit_account_id == account_id else record.credit_after
        expected = _plus(previous, record, account_id, held)
        assert after == expected, (
            f"{account_id} line {n} ({record.id}, {record.flags!r}): stored balance after "
            f"{after}, previous line's {previous} plus its effect gives {expected}"
        )
        previous = after
    return previous


def _plus(
    before: Balances, record: TransferRecord, account_id: str, held: dict[str, int]
) -> Balances:
    pending = posted = 0
    if TransferFlag.PENDING in record.flags:
        pending = record.amount
    elif TransferFlag.POST_PENDING in record.flags:
        pending, posted = -held[record.pending_id or ""], record.amount
    elif TransferFlag.VOID_PENDING in record.flags:
        pending = -held[record.pending_id or ""]
    else:
        posted = record.amount
    if record.debit_account_id == account_id:
        return before.add(debits_pending=pending, debits_posted=posted)
    return before.add(credits_pending=pending, credits_posted=posted)


def _transaction_plan(
    rng: random.Random, mine: str, tid: str, holds: list[TransferInput]
) -> tuple[list[list[TransferInput]], TransferInput | None]:
    """The post calls of one transaction, and the hold it resolves (if it resolves one)."""
    amount = rng.randint(1, 100)
    roll = rng.random()
    resolved = None
    if roll < 0.25:
        first = [_pay(tid, mine, HOT, amount)]
    elif roll < 0.45:
        first = [_pay(tid, HOT, mine, amount)]
    elif roll < 0.7 or not holds:
        first = [_pay(tid, mine, HOT, amount, TransferFlag.PENDING)]
    else:
        resolved = holds.pop(0)
        assert resolved.amount is not None
        flags, posted = rng.choice(
            [
                (TransferFlag.POST_PENDING, None),
                (TransferFlag.POST_PENDING, rng.randint(1, resolved.amount)),
                (TransferFlag.VOID_PENDING, None),
            ]
        )
        first = [_resolve(tid, resolved.id, flags, posted)]
    plan = [first]
    if rng.random() < 0.3:  # a second post in the same transaction, after the first
        plan.append([_pay(f"{tid}.2", HOT, mine, rng.randint(1, 100))])
    return plan, resolved


async def _payer(container: Container, k: int, book: Book) -> None:
    rng = random.Random(SEED * 100 + k)
    mine = f"c{k:02d}"
    holds: list[TransferInput] = []
    for n in range(TRANSACTIONS):
        plan, resolved = _transaction_plan(rng, mine, f"w{k:02d}.{n:02d}", holds)
        async with container.db.transaction() as uow:
            for transfers in plan:
                assert await ledger.post(uow, transfers) == ["ok"] * len(transfers), transfers
                await asyncio.sleep(rng.random() * 0.005)  # others commit meanwhile
        for transfers in plan:  # committed: book it
            for t in transfers:
                book.apply(t)
                if t.flags & TransferFlag.PENDING:
                    holds.append(t)
                if resolved is not None and t.pending_id == resolved.id:
                    assert resolved.amount is not None
                    posted = (
                        (t.amount or resolved.amount) if t.flags & TransferFlag.POST_PENDING else 0
                    )
                    book.resolve(resolved, posted)


@on_postgres
@pytest.mark.postgres
async def test_concurrent_transactions_keep_exact_balances_and_chained_statements(
    container: Container,
) -> None:
    """16 tasks x 15 transactions on one shared unconstrained account (plain transfers both
    ways, holds, and holds posted in full, in part or voided in later transactions, some with
    a second post in the same transaction), each task with its own funded constrained account.
    Afterwards every balance equals what the tests' own book adds up to, ``run_check`` is
    clean, and every account's statement is one running chain from zero to its balance: a
    ``debit_after``/``credit_after`` not corrected for what committed between a post and its
    commit breaks the chain."""
    mine = [f"c{k:02d}" for k in range(TASKS)]
    await _open(container, (FUND, FREE), (HOT, FREE), *((m, LIMIT) for m in mine))
    book = Book()
    funding = [_pay(f"fund.{m}", FUND, m, FUNDING) for m in mine]
    assert await _post_alone(container, funding) == ["ok"] * TASKS
    for t in funding:
        book.apply(t)

    await asyncio.wait_for(
        asyncio.gather(*(_payer(container, k, book) for k in range(TASKS))), 10 * SETTLE_S
    )

    assert book.held, "no holds were made"
    for account_id in [FUND, HOT, *mine]:
        stored = await _balances(container, account_id)
        expected = book.balances[account_id]
        assert stored == Balances(*expected), account_id
        lines = await _statement(container, account_id)
        assert _chains(lines, account_id, book.held) == stored, account_id
    hot_lines = await _statement(container, HOT)
    assert len(hot_lines) > TASKS * TRANSACTIONS // 2
    await _assert_check_ok(container)


# --- 3. a transaction sees its own transfers -------------------------------------------------


async def test_transaction_posts_its_own_pending_transfer(container: Container) -> None:
    """A hold posted earlier in the same transaction is visible to ``get_account`` and
    ``statement`` and can be posted by a later ``post`` in that transaction: the deferred
    writes are applied before any later ledger call, not only at commit."""
    await _open(container, ("src", FREE), ("dst", FREE))
    async with container.db.transaction() as uow:
        hold = _pay("h1", "src", "dst", 100, TransferFlag.PENDING)
        assert await ledger.post(uow, [hold]) == ["ok"]
        assert (await ledger.get_account(uow, "src")).balances == Balances(debits_pending=100)
        assert (await ledger.get_account(uow, "dst")).balances == Balances(credits_pending=100)
        assert await ledger.post(uow, [_resolve("p1", "h1", TransferFlag.POST_PENDING, 60)]) == [
            "ok"
        ]
        assert (await ledger.get_account(uow, "src")).balances == Balances(debits_posted=60)
        lines = await ledger.statement(uow, "dst", after_seq=0, limit=10)
        assert [record.id for _, record in lines] == ["h1", "p1"]
    assert await _balances(container, "src") == Balances(debits_posted=60)
    assert await _balances(container, "dst") == Balances(credits_posted=60)
    async with container.db.transaction(write=False) as uow:
        posted = await ledger.get_transfer(uow, "p1")
    assert posted.debit_after == Balances(debits_posted=60)
    assert posted.credit_after == Balances(credits_posted=60)
    assert _chains(await _statement(container, "dst"), "dst", {"h1": 100}) == Balances(
        credits_posted=60
    )
    await _assert_check_ok(container)


async def test_later_posts_decide_on_the_transactions_own_transfers(container: Container) -> None:
    """Decisions later in a transaction see its earlier transfers on unconstrained accounts: a
    balancing debit is capped by a credit posted just before it (balancing transfers read the
    balance), and a constrained account credited from an unconstrained one may spend it."""
    await _open(container, ("src", FREE), ("mid", FREE), ("dst", FREE), ("lim", LIMIT))
    async with container.db.transaction() as uow:
        assert await ledger.post(uow, [_pay("in", "src", "mid", 70)]) == ["ok"]
        balancing = _pay("drain", "mid", "dst", 1_000, TransferFlag.BALANCING_DEBIT)
        assert await ledger.post(uow, [balancing]) == ["ok"]
        assert (await ledger.get_transfer(uow, "drain")).amount == 70
        assert await ledger.post(uow, [_pay("fill", "src", "lim", 50)]) == ["ok"]
        assert await ledger.post(uow, [_pay("spend", "lim", "dst", 50)]) == ["ok"]
        assert await ledger.post(uow, [_pay("over", "lim", "dst", 1)]) == ["exceeds_credits"]
    assert await _balances(container, "mid") == Balances(debits_posted=70, credits_posted=70)
    assert await _balances(container, "dst") == Balances(credits_posted=120)
    assert await _balances(container, "src") == Balances(debits_posted=120)
    await _assert_check_ok(container)


async def test_closing_and_creating_after_a_post_in_the_same_transaction(
    container: Container,
) -> None:
    """``close_account`` and ``create_accounts`` later in the transaction that posted into the
    account apply its deferred writes first: the close sees the transfer's balance, the commit
    does not fail on the transaction's own close, and the transfer is kept."""
    await _open(container, ("src", FREE), ("x", FREE))
    async with container.db.transaction() as uow:
        assert await ledger.post(uow, [_pay("into-x", "src", "x", 40)]) == ["ok"]
        new = [AccountInput("y", "USD", "wallet", FREE, "{}")]
        assert [r.result for r in await ledger.create_accounts(uow, None, new)] == ["ok"]
        closed = await ledger.close_account(uow, CTX, "x", public=False)
        assert AccountFlag.CLOSED in closed.flags
        assert closed.balances == Balances(credits_posted=40)
        assert await ledger.post(uow, [_pay("late", "src", "x", 1)]) == ["credit_account_closed"]
    assert await _transfer_exists(container, "into-x")
    assert not await _transfer_exists(container, "late")
    assert await _balances(container, "x") == Balances(credits_posted=40)
    assert await _balances(container, "y") == Balances()
    await _assert_check_ok(container)


# --- 4. a transaction that raises leaves nothing ---------------------------------------------


class Boom(Exception):
    """Raised by a test inside a transaction, to roll it back."""


@pytest.mark.parametrize("read_first", [False, True], ids=["raise_after_post", "raise_after_read"])
async def test_transaction_that_raises_leaves_nothing(
    container: Container, read_first: bool
) -> None:
    """A transaction that raises after posting (and, in one variant, after a ledger read that
    applies the deferred writes) leaves no transfer, hold or balance behind: the deferred
    writes belong to the transaction and never run, or roll back with it. The same ids can be
    posted afterwards."""
    await _open(container, ("src", FREE), ("dst", FREE))
    transfers = [_pay("t", "src", "dst", 70), _pay("h", "src", "dst", 30, TransferFlag.PENDING)]

    async def doomed() -> None:
        async with container.db.transaction() as uow:
            assert await ledger.post(uow, transfers) == ["ok", "ok"]
            if read_first:
                seen = (await ledger.get_account(uow, "dst")).balances
                assert seen == Balances(credits_pending=30, credits_posted=70)
            raise Boom

    with pytest.raises(Boom):
        await doomed()
    async with container.db.transaction(write=False) as uow:
        for tid in ("t", "h"):
            with pytest.raises(TransferNotFound):
                await ledger.get_transfer(uow, tid)
        assert await ledger.statement(uow, "dst", after_seq=0, limit=10) == []
    assert await _balances(container, "src") == Balances()
    assert await _balances(container, "dst") == Balances()
    await _assert_check_ok(container)
    assert await _post_alone(container, transfers) == ["ok", "ok"]
    await _assert_check_ok(container)


# --- 5. closing an account between a post and its commit -------------------------------------


async def _close(container: Container, account_id: str) -> None:
    async with container.db.transaction() as uow:
        await ledger.close_account(uow, CTX, account_id, public=False)


async def _transfer_exists(container: Container, tid: str) -> bool:
    async with container.db.transaction(write=False) as uow:
        try:
            await ledger.get_transfer(uow, tid)
        except TransferNotFound:
            return False
    return True


@on_postgres
@pytest.mark.postgres
async def test_account_closed_while_a_post_into_it_is_open(container: Container) -> None:
    """T1 posts into the unconstrained account X and stays open; T2 closes X. If the close
    committed while T1 was still open, T1's commit must fail and leave nothing in X (a transfer
    into a closed account); if the close waited for T1, T1's transfer must be in X after it.
    Either way ``run_check`` is clean. Afterwards the group-commit writer answers
    ``credit_account_closed`` / ``debit_account_closed`` for X."""
    await _open(container, ("src", FREE), ("x", FREE))
    t1 = HeldOpen(container, [_pay("into-x", "src", "x", 40)])
    try:
        assert await t1.wait_posted() == ["ok"]
        closing = asyncio.create_task(_close(container, "x"))
        done, _ = await asyncio.wait({closing}, timeout=BOUND_S)
        closed_while_open = closing in done
        if closed_while_open:
            closing.result()  # re-raises what the close hit
        failure = await t1.commit()
    finally:
        await t1.let_go()
    await asyncio.wait_for(closing, SETTLE_S)

    async with container.db.transaction(write=False) as uow:
        x = await ledger.get_account(uow, "x")
    assert AccountFlag.CLOSED in x.flags
    if closed_while_open:
        assert failure is not None, "T1 committed a transfer into an account closed before it"
        assert not await _transfer_exists(container, "into-x")
        assert x.balances == Balances()
    else:
        assert failure is None, f"T1 failed although the close waited for it: {failure!r}"
        assert await _transfer_exists(container, "into-x")
        assert x.balances == Balances(credits_posted=40)
    await _assert_check_ok(container)

    writer = container.ledger_writer
    into = LedgerRequest([_pay("after-in", "src", "x", 5)], CTX, public=True)
    out_of = LedgerRequest([_pay("after-out", "x", "src", 5)], CTX, public=True)
    assert await writer.submit(into) == ["credit_account_closed"]
    assert await writer.submit(out_of) == ["debit_account_closed"]


@dataclass
class Attempt:
    """One transfer into X racing the close, and what its caller saw."""

    tid: str
    amount: int
    results: list[str] = field(default_factory=list)
    sent_after_close: bool = False
    commit_after_close: bool = False
    error: BaseException | None = None


async def _direct(container: Container, a: Attempt, closed: asyncio.Event, delay_s: float) -> None:
    async def run() -> None:
        async with container.db.transaction() as uow:
            a.sent_after_close = closed.is_set()
            a.results = await ledger.post(uow, [_pay(a.tid, "src", "x", a.amount)])
            await asyncio.sleep(delay_s)
            a.commit_after_close = closed.is_set()

    [outcome] = await asyncio.gather(run(), return_exceptions=True)
    a.error = outcome if isinstance(outcome, BaseException) else None


async def _through_writer(container: Container, a: Attempt, closed: asyncio.Event) -> None:
    a.sent_after_close = closed.is_set()
    request = LedgerRequest([_pay(a.tid, "src", "x", a.amount)], CTX, public=True)
    [outcome] = await asyncio.gather(
        container.ledger_writer.submit(request), return_exceptions=True
    )
    if isinstance(outcome, BaseException):
        a.error = outcome
    else:
        a.results = outcome


@on_postgres
@pytest.mark.postgres
async def test_close_racing_posts_never_loses_or_lands_a_transfer(container: Container) -> None:
    """Transfers into X, from transactions that stay open a while and through the group-commit
    writer, race X's close. No writer caller sees an exception (a batch hit by the close is
    retried and answered ``credit_account_closed``); a transaction that posted ``ok`` and began
    its commit after the close committed must have failed; X holds exactly the transfers whose
    callers were told they committed; ``run_check`` is clean."""
    await _open(container, ("src", FREE), ("x", FREE))
    rng = random.Random(SEED)
    closed = asyncio.Event()
    direct = [Attempt(f"d{i:02d}", rng.randint(1, 100)) for i in range(12)]
    queued = [Attempt(f"q{i:02d}", rng.randint(1, 100)) for i in range(30)]

    async def closer() -> None:
        await asyncio.sleep(0.03)
        await _close(container, "x")
        closed.set()

    async def direct_at(a: Attempt) -> None:
        await asyncio.sleep(rng.random() * 0.06)
        await _direct(container, a, closed, rng.random() * 0.03)

    async def queued_at(a: Attempt) -> None:
        await asyncio.sleep(rng.random() * 0.08)
        await _through_writer(container, a, closed)

    await asyncio.wait_for(
        asyncio.gather(closer(), *map(direct_at, direct), *map(queued_at, queued)), SETTLE_S
    )

    for a in queued:
        assert a.error is None, f"{a.tid}: the writer raised {a.error!r}"
        assert a.results in (["ok"], ["credit_account_closed"]), (a.tid, a.results)
        if a.sent_after_close:
            assert a.results == ["credit_account_closed"], a.tid
    for a in direct:
        assert a.results in (["ok"], ["credit_account_closed"]), (a.tid, a.results, a.error)
        if a.sent_after_close:
            assert a.results == ["credit_account_closed"], a.tid
        if a.results == ["ok"] and a.commit_after_close:
            assert a.error is not None, f"{a.tid} committed into X after X was closed"
        if a.results != ["ok"]:
            assert a.error is None, f"{a.tid}: {a.error!r}"
    landed = {a.tid: a.amount for a in direct + queued if a.results == ["ok"] and a.error is None}
    lines = await _statement(container, "x")
    assert {record.id: record.amount for record in lines} == landed
    x = await _balances(container, "x")
    assert x == Balances(credits_posted=sum(landed.values()))
    assert _chains(lines, "x", {}) == x
    await _assert_check_ok(container)
