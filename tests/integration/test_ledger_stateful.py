"""The real ledger service against the pure reference model (tests/ledger_reference.py).

A Hypothesis state machine creates accounts (some limited, some domain-reserved), posts random
requests (linked chains, holds with timeouts, partial posts, voids, balancing, retries and
malformed transfers) through ``service.post``, ``service.post_requests`` and the group-commit
writer, retries whole requests, posts and voids open holds, closes accounts, moves the ledger
clock at random points and exactly onto holds' expiries (so holds expire between steps and are
released lazily, from whichever side a batch touches) and sweeps now and then. After every step
that wrote, the results, the stored balances and the stored transfer ids must equal the model's,
no limit may be broken, every currency must balance, and ``hammerlock ledger check``
(``run_check``) must report the ledger sound.

Runs on SQLite and PostgreSQL. Hypothesis's state machines are synchronous, so each test owns an
event loop and one container on a FixedClock; examples share the database and keep apart by
giving every account and transfer id a per-example prefix.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import pytest
import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.ledger import service
from hammerlock.ledger.check import run_check
from hammerlock.ledger.model import AccountFlag, AccountInput, TransferFlag, TransferInput
from hammerlock.ledger.service import LedgerRequest
from hammerlock.settings import Settings
from tests.ledger_reference import ReferenceLedger, RefHold
from tests.strategies import (
    LedgerScene,
    ledger_account_inputs,
    ledger_account_variants,
    ledger_requests,
)

T = TypeVar("T")
MAX_ACCOUNTS = 10
_examples = itertools.count()
_CTX = Context.system("tests.ledger")
# Public requests may not touch domain-reserved accounts; a third of the requests are public.
PUBLIC = st.integers(0, 2).map(lambda n: n == 2)


class _Env:
    """One event loop and one container per test; its examples run in it one after another."""

    def __init__(self, app_settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = FixedClock()
        self.container = Container(app_settings, clock=self.clock, background=False)
        self.run(self.container.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        try:
            self.run(self.container.stop())
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


class LedgerMachine(RuleBasedStateMachine):
    env: ClassVar[_Env]

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"m{next(_examples)}."
        self.model = ReferenceLedger(self.env.clock.now_us())
        self.created: dict[str, AccountInput] = {}
        self.sent: list[TransferInput] = []
        self.requests: list[list[TransferInput]] = []
        self.request_no = itertools.count()
        self.lazily_exact: set[str] = set()
        self._base_ids: list[str] = []
        # Transfers worth posting or voiding: the holds the model accepted, and the first
        # accepted transfer (for `pending_transfer_not_pending`, if it is not a hold).
        self.resolvable: list[str] = []
        self.not_a_hold: str | None = None
        # Bumped by every step that may write; the invariant skips steps that wrote nothing.
        self.state_no = 0
        self.checked_state = -1

    # --- helpers ------------------------------------------------------------------------------

    @property
    def db(self) -> Any:
        return self.env.container.db

    def scene(self) -> LedgerScene:
        return LedgerScene(
            accounts=tuple((a.id, a.currency) for a in self.created.values()),
            funders=tuple(a for a in self._base_ids if ".world." in a),
            pending_ids=(*self.resolvable[:1], *self.resolvable[-5:]),
            sent=tuple(self.sent),
            missing=f"{self.prefix}missing",
        )

    def _hold_accounts(self, hold_id: str) -> tuple[str, str]:
        hold = self.model.holds[hold_id]
        return hold.debit, hold.credit

    def _new_request_prefix(self) -> str:
        return f"{self.prefix}r{next(self.request_no)}."

    def _remember(self, requests: Sequence[Sequence[TransferInput]]) -> None:
        for transfers in requests:
            self.requests.append(list(transfers))
            self.sent.extend(t for t in transfers if t.id.startswith(self.prefix))

    def _expect_same(
        self,
        requests: Sequence[tuple[Sequence[TransferInput], bool]],
        got: list[list[str]],
    ) -> None:
        self.state_no += 1
        want = self.model.post(requests)
        for (transfers, _), results in zip(requests, want, strict=True):
            for t, result in zip(transfers, results, strict=True):
                if result != "ok" or t.id in self.resolvable:
                    continue
                if TransferFlag.PENDING in t.flags or self.not_a_hold is None:
                    self.resolvable.append(t.id)
                    self.not_a_hold = self.not_a_hold or t.id
        for (transfers, public), g, w in zip(requests, got, want, strict=True):
            assert g == w, f"public={public}\n{_show(transfers)}\nservice: {g}\nmodel:   {w}"
        self._remember([transfers for transfers, _ in requests])

    async def _create(self, accounts: list[AccountInput], public: bool) -> list[str]:
        self.state_no += 1
        async with self.db.transaction() as uow:
            results = await service.create_accounts(uow, _CTX, accounts, public=public)
        return [r.result for r in results]

    # --- rules --------------------------------------------------------------------------------

    @initialize()
    def base_accounts(self) -> None:
        """Per currency an unlimited "world" account that funds the others and a wallet that
        must not go negative; one account limited the other way; one domain-reserved account."""
        p = self.prefix
        debits_limited = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS
        credits_limited = AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS
        accounts = [
            *(
                AccountInput(f"{p}world.{c}", c, "world", AccountFlag(0), "{}")
                for c in ("USD", "EUR")
            ),
            *(
                AccountInput(f"{p}wallet.{c}", c, "wallet", debits_limited, "{}")
                for c in ("USD", "EUR")
            ),
            AccountInput(f"{p}payable.USD", "USD", "payable", credits_limited, "{}"),
            AccountInput(f"escrow:{p}USD", "USD", "escrow", AccountFlag(0), "{}"),
        ]
        assert self.env.run(self._create(accounts, public=False)) == ["ok"] * len(accounts)
        self.model.create_accounts(accounts, public=False)
        self.created.update((a.id, a) for a in accounts)
        self._base_ids = [a.id for a in accounts]

    @precondition(lambda self: len(self.created) < MAX_ACCOUNTS)
    @rule(data=st.data(), public=st.booleans())
    def create_accounts(self, data: st.DataObject, public: bool) -> None:
        accounts: list[AccountInput] = []
        for k in range(data.draw(st.integers(1, 3), label="count")):
            if data.draw(st.booleans(), label="again") and self.created:
                old = data.draw(st.sampled_from(sorted(self.created)), label="existing")
                accounts.append(data.draw(ledger_account_variants(self.created[old])))
                continue
            reserved = data.draw(st.integers(0, 5), label="reserved") == 0
            name = f"{'escrow:' if reserved else ''}{self.prefix}a{len(self.created)}.{k}"
            accounts.append(data.draw(ledger_account_inputs(name)))
        got = self.env.run(self._create(accounts, public))
        assert got == self.model.create_accounts(accounts, public=public), (accounts, got)
        for a, result in zip(accounts, got, strict=True):
            if result == "ok":
                self.created[a.id] = a

    @rule(data=st.data())
    def post(self, data: st.DataObject) -> None:
        """One random request through ``service.post``, in its own transaction."""
        self._send(data, "post", 1)

    @rule(data=st.data(), count=st.integers(2, 3))
    def post_requests(self, data: st.DataObject, count: int) -> None:
        """Several requests in one transaction, as a group-commit batch applies them."""
        self._send(data, "post_requests", count)

    @rule(data=st.data(), count=st.integers(1, 3))
    def submit_to_writer(self, data: st.DataObject, count: int) -> None:
        """Concurrent submissions to the started ``LedgerWriter``."""
        self._send(data, "writer", count)

    def _send(self, data: st.DataObject, channel: str, count: int) -> None:
        requests: list[tuple[Sequence[TransferInput], bool]] = []
        for _ in range(count):
            transfers = data.draw(ledger_requests(self._new_request_prefix(), self.scene()))
            public = channel == "writer" or data.draw(PUBLIC, label="public")
            requests.append((transfers, public))
        ctx = data.draw(st.sampled_from((None, _CTX)), label="ctx")
        ledger_requests_ = [LedgerRequest(ts, ctx, p) for ts, p in requests]
        self._expect_same(requests, self.env.run(self._submit(channel, ledger_requests_)))
        # (The writer may commit its queue in one batch or several; either way each batch
        # releases the expired holds touching the accounts it names.)
        self.lazily_exact = _named(requests)

    async def _submit(self, channel: str, requests: list[LedgerRequest]) -> list[list[str]]:
        if channel == "writer":
            # Queued in this order (each submit enqueues before it first awaits), so applied in
            # this order, whichever batches the writer makes of them.
            writer = self.env.container.ledger_writer
            return list(await asyncio.gather(*(writer.submit(r) for r in requests)))
        async with self.db.transaction() as uow:
            if channel == "post":
                [r] = requests
                return [await service.post(uow, r.transfers, ctx=r.ctx, public=r.public)]
            return await service.post_requests(uow, requests)

    @precondition(lambda self: bool(self.requests))
    @rule(data=st.data(), public=PUBLIC, extended=st.booleans())
    def retry_request(self, data: st.DataObject, public: bool, extended: bool) -> None:
        """A client retrying a whole earlier request: a committed chain answers `exists` all
        through; a failed one is evaluated afresh. Or the retry starts with a new transfer
        linked to the old first chain: a chain half new and half there already must fail."""
        transfers = data.draw(st.sampled_from(self.requests), label="request")
        if extended:
            [new] = data.draw(ledger_requests(self._new_request_prefix(), self.scene(), max_size=1))
            transfers = [replace(new, flags=new.flags | TransferFlag.LINKED), *transfers]
        self._post_one(transfers, public=public)

    @precondition(lambda self: bool(self.model.open_holds()))
    @rule(data=st.data(), posting=st.booleans(), public=PUBLIC)
    def resolve_an_open_hold(self, data: st.DataObject, posting: bool, public: bool) -> None:
        """Post (all or part) or void a hold the model has open: the common case, which the
        random requests reach less often than their mistakes."""
        hold = self.model.holds[data.draw(st.sampled_from(self.model.open_holds()), label="hold")]
        amounts = (None, hold.amount, max(1, hold.amount // 2)) if posting else (None,)
        flags = TransferFlag.POST_PENDING if posting else TransferFlag.VOID_PENDING
        transfer = TransferInput(
            f"{self._new_request_prefix()}0",
            None,
            None,
            data.draw(st.sampled_from(amounts), label="amount"),
            None,
            None,
            flags,
            pending_id=hold.id,
        )
        self._post_one([transfer], public=public)

    @rule(
        data=st.data(),
        how=st.sampled_from(("seconds", "to_next_expiry", "sweep")),
        touch=st.sampled_from((None, "debit", "credit")),
    )
    def time_passes(self, data: st.DataObject, how: str, touch: str | None) -> None:
        """Move the ledger clock by whole seconds (give or take a microsecond), or exactly onto
        (or a microsecond either side of) the next hold's expiry, or run the sweeper. After a
        hold expires, maybe move money on one side of it at once: lazy expiry must release it
        whichever side a batch names, and it must no longer count against a limit."""
        if how == "sweep":
            self._sweep()
            return
        target = self.model.next_expiry_us()
        if how == "to_next_expiry" and target is not None:
            offset_us = data.draw(st.sampled_from((0, -1, 1)), label="offset_us")
            us = max(0, target + offset_us - self.model.now_us)
        else:
            seconds = data.draw(st.integers(0, 8), label="seconds")
            jitter_us = data.draw(st.sampled_from((0, 0, 1, -1)), label="jitter_us")
            us = max(0, seconds * 1_000_000 + jitter_us)
        self.env.clock.advance(us=us)
        self.model.advance(us)
        self.lazily_exact = set()
        if touch is not None and self.model.unreleased:
            hold_id = data.draw(st.sampled_from(sorted(self.model.unreleased)), label="hold")
            self._touch_one_side(data, self.model.holds[hold_id], touch)

    def _sweep(self) -> None:
        async def go() -> list[str]:
            async with self.db.transaction() as uow:
                return [h.transfer_id for h in await service.sweep_expired_holds(uow)]

        self.state_no += 1
        swept = {h for h in self.env.run(go()) if h.startswith(self.prefix)}
        assert swept == self.model.sweep()
        self.lazily_exact = set(self.created)

    def _touch_one_side(self, data: st.DataObject, hold: RefHold, side: str) -> None:
        """Move money on one of the expired ``hold``'s accounts only, as much as that account
        allows if the hold no longer counts (it must not)."""
        mine = self.model.accounts[hold.debit if side == "debit" else hold.credit]
        others = [
            a.id
            for a in self.model.accounts.values()
            if a.currency == mine.currency and a.id not in (hold.debit, hold.credit)
        ]
        if not others:
            return
        other = self.model.accounts[data.draw(st.sampled_from(others), label="other")]
        if side == "debit":
            debit, credit = mine, other
            room = mine.credits_posted - mine.debits_posted - mine.debits_pending
        else:
            debit, credit = other, mine
            room = mine.debits_posted - mine.credits_posted - mine.credits_pending
        amount = room if room > 0 else data.draw(st.integers(1, 50), label="amount")
        transfer = TransferInput(
            f"{self._new_request_prefix()}0", debit.id, credit.id, amount, mine.currency, "pay"
        )
        self._post_one([transfer], public=False)

    def _post_one(self, transfers: Sequence[TransferInput], *, public: bool) -> None:
        async def go() -> list[str]:
            async with self.db.transaction() as uow:
                return await service.post(uow, transfers, public=public)

        self._expect_same([(transfers, public)], [self.env.run(go())])
        self.lazily_exact = _named([(transfers, public)])

    @rule(data=st.data(), now=st.integers(0, 2))
    def close_account(self, data: st.DataObject, now: int) -> None:
        """Close an account (any but the funding "world" ones), one time in three."""
        if now != 2:
            return
        closable = [a for a in self.created if ".world." not in a]
        holding = [a for h in self.model.open_holds() for a in self._hold_accounts(h)]
        if holding and data.draw(st.booleans(), label="holding"):  # one with a hold open
            closable = [a for a in closable if a in holding] or closable
        account_id = data.draw(st.sampled_from(closable), label="account")

        async def go() -> AccountFlag:
            async with self.db.transaction() as uow:
                return (await service.close_account(uow, _CTX, account_id, public=False)).flags

        self.state_no += 1
        assert AccountFlag.CLOSED in self.env.run(go())
        self.model.close_account(account_id)

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        if self.checked_state == self.state_no:
            return  # this step wrote nothing (only moved the clock): the last check holds
        self.checked_state = self.state_no
        self.env.run(self._check())

    async def _check(self) -> None:
        async with self.db.transaction(write=False) as uow:
            rows = (
                await uow.conn.execute(
                    sa.text(
                        "SELECT id, currency, flags, debits_pending, debits_posted, "
                        "credits_pending, credits_posted FROM ledger_accounts"
                    )
                )
            ).all()
            totals = (
                await uow.conn.execute(
                    sa.text(
                        "SELECT currency, sum(debits_posted), sum(credits_posted), "
                        "sum(debits_pending), sum(credits_pending) "
                        "FROM ledger_accounts GROUP BY currency"
                    )
                )
            ).all()
            stored = (
                await uow.conn.execute(
                    sa.text("SELECT id, amount FROM ledger_transfers WHERE id LIKE :p"),
                    {"p": self.prefix + "%"},
                )
            ).all()
        mine = {r.id: r for r in rows if r.id in self.model.accounts}
        assert set(mine) == set(self.model.accounts)
        for account_id, r in mine.items():
            got = (r.debits_pending, r.debits_posted, r.credits_pending, r.credits_posted)
            assert got == self.model.stored_balances(account_id), account_id
            a = self.model.accounts[account_id]
            assert a.within_limits(), f"the reference model broke {account_id}'s limit"
            assert AccountFlag(r.flags) == a.flags, account_id
            if account_id in self.lazily_exact and a.flags & _LIMITS:
                # A batch releases every expired hold touching the accounts with a limit it
                # names (an unconstrained one decides nothing: the sweeper releases those).
                assert got == a.balances(), f"{account_id} still holds an expired hold"
        for r in rows:  # every account, this example's or not: no limit broken
            assert _within_limits(r), r
        for currency, dpo, cpo, dp, cp in totals:
            assert (dpo, dp) == (cpo, cp), f"{currency} does not balance"
        assert {r.id: r.amount for r in stored} == {
            i: t.amount for i, t in self.model.transfers.items()
        }
        report = await run_check(self.db)
        assert report.ok, report.lines()


_LIMITS = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS


def _named(requests: Sequence[tuple[Sequence[TransferInput], bool]]) -> set[str]:
    return {
        a
        for transfers, _ in requests
        for t in transfers
        for a in (t.debit_account_id, t.credit_account_id)
        if a
    }


def _within_limits(r: Any) -> bool:
    flags = AccountFlag(r.flags)
    if AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS in flags and (
        r.debits_pending + r.debits_posted > r.credits_posted
    ):
        return False
    return not (
        AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS in flags
        and r.credits_pending + r.credits_posted > r.debits_posted
    )


def _show(transfers: Sequence[TransferInput]) -> str:
    return "\n".join(f"  {t}" for t in transfers)


# A passing run takes 10-15 s per backend with the "ci" profile (20 examples of up to 30 steps);
# a failing one may shrink for up to Hypothesis's 5 minutes, so the timeout leaves room for the
# shrunk example to be reported.
@pytest.mark.timeout(600)
def test_ledger_matches_reference_model(app_settings: Settings) -> None:
    env = _Env(app_settings)
    machine = type("LedgerMachineRun", (LedgerMachine,), {"env": env})
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                settings.default,
                max_examples=max(10, settings.default.max_examples // 3),
                stateful_step_count=30,
            ),
        )
    finally:
        env.close()
