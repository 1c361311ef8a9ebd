"""What the database itself enforces for the ledger, and what ``run_check`` catches, on SQLite
and PostgreSQL: append-only transfers, limits as CHECK constraints, one transfer per id and one
resolution per hold, and a checker that names the account someone edited by hand."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.engine import Database
from hammerlock.ledger import service
from hammerlock.ledger.check import run_check
from hammerlock.ledger.model import AccountFlag, AccountInput, TransferFlag, TransferInput
from hammerlock.ledger.storage import transfers

DR_LIMIT = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS
CR_LIMIT = AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS


def _t(transfer_id: str, debit: str, credit: str, amount: int, **kw: Any) -> TransferInput:
    return TransferInput(transfer_id, debit, credit, amount, "USD", "pay", **kw)


async def _seed(db: Database) -> None:
    """world → wallet 100 (limited), a hold wallet → shop 30, shop → payable 20 (limited)."""
    async with db.transaction() as uow:
        accounts = [
            AccountInput("world", "USD", "world", AccountFlag(0), "{}"),
            AccountInput("wallet", "USD", "wallet", DR_LIMIT, "{}"),
            AccountInput("shop", "USD", "shop", AccountFlag(0), "{}"),
            AccountInput("payable", "USD", "payable", CR_LIMIT, "{}"),
        ]
        await service.create_accounts(uow, None, accounts)
        results = await service.post(
            uow,
            [
                _t("fund", "world", "wallet", 100),
                _t("hold", "wallet", "shop", 30, flags=TransferFlag.PENDING, timeout_s=60),
                _t("owe", "payable", "shop", 50),
                _t("pay", "shop", "payable", 20),
            ],
        )
        assert results == ["ok"] * 4


async def _execute(db: Database, sql: str, **params: Any) -> None:
    async with db.transaction() as uow:
        await uow.conn.execute(sa.text(sql), params)


async def _balances(db: Database, account_id: str) -> tuple[int, int, int, int]:
    async with db.transaction(write=False) as uow:
        row = (
            await uow.conn.execute(
                sa.text(
                    "SELECT debits_pending, debits_posted, credits_pending, credits_posted "
                    "FROM ledger_accounts WHERE id = :id"
                ),
                {"id": account_id},
            )
        ).one()
    return (row[0], row[1], row[2], row[3])


# --- append-only transfers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_transfers SET amount = 1 WHERE id = 'fund'",
        "UPDATE ledger_transfers SET metadata = '{}'",
        "DELETE FROM ledger_transfers WHERE id = 'fund'",
        "DELETE FROM ledger_transfers",
    ],
)
async def test_transfer_rows_cannot_be_updated_or_deleted(container: Container, sql: str) -> None:
    db = container.db
    await _seed(db)
    with pytest.raises(DBAPIError, match="append-only"):
        await _execute(db, sql)
    async with db.transaction(write=False) as uow:
        rows = (await uow.conn.execute(sa.text("SELECT id, amount FROM ledger_transfers"))).all()
    assert {r.id: r.amount for r in rows} == {"fund": 100, "hold": 30, "owe": 50, "pay": 20}
    assert (await run_check(db)).ok


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite has no TRUNCATE
async def test_transfers_cannot_be_truncated_on_postgresql(container: Container) -> None:
    await _seed(container.db)
    with pytest.raises(DBAPIError, match="append-only"):
        await _execute(container.db, "TRUNCATE ledger_transfers CASCADE")


# --- limits and balances as CHECK constraints ---------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        # wallet: debits 30 held + 0 posted against 100 credits; 71 more posted breaks the limit
        "UPDATE ledger_accounts SET debits_posted = 71 WHERE id = 'wallet'",
        "UPDATE ledger_accounts SET debits_pending = 101 WHERE id = 'wallet'",
        "UPDATE ledger_accounts SET credits_posted = 29 WHERE id = 'wallet'",
        # payable: credits must not exceed its 50 of debits
        "UPDATE ledger_accounts SET credits_posted = 51 WHERE id = 'payable'",
        "UPDATE ledger_accounts SET credits_pending = 31 WHERE id = 'payable'",
        # no balance below zero, limited or not
        "UPDATE ledger_accounts SET debits_posted = -1 WHERE id = 'world'",
        "UPDATE ledger_accounts SET credits_pending = -1 WHERE id = 'shop'",
    ],
)
async def test_check_constraints_refuse_a_balance_over_the_limit(
    container: Container, sql: str
) -> None:
    db = container.db
    await _seed(db)
    with pytest.raises(IntegrityError):
        await _execute(db, sql)
    assert await _balances(db, "wallet") == (30, 0, 0, 100)
    assert await _balances(db, "payable") == (0, 50, 0, 20)


async def test_the_limit_constraint_holds_on_a_closed_account(container: Container) -> None:
    db = container.db
    await _seed(db)
    await _execute(
        db,
        "UPDATE ledger_accounts SET flags = :f WHERE id = 'wallet'",
        f=int(DR_LIMIT | AccountFlag.CLOSED),
    )
    with pytest.raises(IntegrityError):
        await _execute(db, "UPDATE ledger_accounts SET debits_posted = 71 WHERE id = 'wallet'")
    # right up to the limit is allowed (and the check then reports the hand edit)
    await _execute(db, "UPDATE ledger_accounts SET debits_posted = 70 WHERE id = 'wallet'")
    report = await run_check(db)
    assert not report.ok
    assert "account wallet" in report.problems[-1]


# --- one transfer per id, one resolution per hold ------------------------------------------------


def _row(transfer_id: str, **change: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": transfer_id,
        "debit_account_id": "shop",
        "credit_account_id": "world",
        "amount": 5,
        "requested_amount": 5,
        "currency": "USD",
        "code": "pay",
        "requested_code": "pay",
        "flags": 0,
        "pending_id": None,
        "timeout_s": 0,
        "metadata": "{}",
        "timestamp_us": 1,
        "expires_us": None,
    }
    return {**row, **change}


async def _insert(db: Database, *rows: dict[str, Any]) -> None:
    async with db.transaction() as uow:
        await uow.conn.execute(transfers.insert(), list(rows))


async def test_one_transfer_per_pending_id(container: Container) -> None:
    db = container.db
    await _seed(db)
    post = int(TransferFlag.POST_PENDING)
    await _insert(db, _row("post-1", flags=post, pending_id="hold"))
    with pytest.raises(IntegrityError):
        await _insert(db, _row("post-2", flags=post, pending_id="hold"))
    with pytest.raises(IntegrityError):  # within one statement, too
        await _insert(
            db,
            _row("void-1", flags=int(TransferFlag.VOID_PENDING), pending_id="other"),
            _row("void-2", flags=int(TransferFlag.VOID_PENDING), pending_id="other"),
        )


async def test_one_transfer_per_id(container: Container) -> None:
    db = container.db
    await _seed(db)
    with pytest.raises(IntegrityError):
        await _insert(db, _row("fund"))
    with pytest.raises(IntegrityError):
        await _insert(db, _row("new"), _row("new"))


@pytest.mark.parametrize(
    ("change", "constraint"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"credit_account_id": "shop"}, "same accounts"),
        ({"debit_account_id": "nobody"}, "foreign key"),
    ],
)
async def test_transfer_rows_are_checked(
    container: Container, change: dict[str, Any], constraint: str
) -> None:
    db = container.db
    await _seed(db)
    with pytest.raises(IntegrityError):
        await _insert(db, _row("bad", **change))


# --- run_check names what was edited by hand ------------------------------------------------------


async def test_run_check_is_ok_on_a_sound_ledger(container: Container) -> None:
    await _seed(container.db)
    report = await run_check(container.db)
    assert report.ok, report.lines()
    assert (report.transfers, report.currencies) == (4, 1)
    assert report.lines() == ["checked 4 transfers in 1 currency: all invariants hold"]


@pytest.mark.parametrize(
    ("sql", "invariants"),
    [
        # money from nowhere: one side only, so the currency no longer balances either
        (
            "UPDATE ledger_accounts SET credits_posted = credits_posted + 1 WHERE id = 'shop'",
            {1, 2},
        ),
        (
            "UPDATE ledger_accounts SET debits_pending = debits_pending - 1 WHERE id = 'wallet'",
            {1, 2},
        ),
        # money moved between two accounts by hand: the totals still balance
        (
            (
                "UPDATE ledger_accounts SET debits_posted = debits_posted + "
                "CASE WHEN id = 'shop' THEN 5 ELSE -5 END WHERE id IN ('shop', 'world')"
            ),
            {2},
        ),
    ],
)
async def test_run_check_names_an_account_whose_balances_were_edited(
    container: Container, sql: str, invariants: set[int]
) -> None:
    db = container.db
    await _seed(db)
    await _execute(db, sql)
    report = await run_check(db)
    assert not report.ok
    named = [p for p in report.problems if p.startswith("invariant 2/4: account ")]
    broken = {"shop", "world"} if invariants == {2} else {sql.split("'")[-2]}
    assert {p.split()[3].rstrip(":") for p in named} == broken
    assert any(p.startswith("invariant 1:") for p in report.problems) == (1 in invariants)
    assert report.lines()[0].endswith(f"{len(report.problems)} problem(s)")


_RELEASE_BY_HAND = (
    "UPDATE ledger_accounts SET debits_pending = 0 WHERE id = 'wallet'",
    "UPDATE ledger_accounts SET credits_pending = 0 WHERE id = 'shop'",
)


@pytest.mark.parametrize(
    ("statements", "accounts", "hold"),
    [
        # the hold's row alone: the balances still say it is held
        (
            ["UPDATE ledger_holds SET state = 'voided' WHERE transfer_id = 'hold'"],
            [],
            "stored as voided, resolved by no transfer",
        ),
        # row and balances, consistently: only the transfers still say it is held
        (
            [
                "UPDATE ledger_holds SET state = 'voided' WHERE transfer_id = 'hold'",
                *_RELEASE_BY_HAND,
            ],
            ["shop", "wallet"],
            "stored as voided, resolved by no transfer",
        ),
        # "expired" a minute early
        (
            [
                (
                    "UPDATE ledger_holds SET state = 'expired', resolved_us = expires_us - 1 "
                    "WHERE transfer_id = 'hold'"
                ),
                *_RELEASE_BY_HAND,
            ],
            [],
            "stored as expired, resolved by no transfer",
        ),
        # the balances alone
        (list(_RELEASE_BY_HAND), ["shop", "wallet"], None),
    ],
    ids=["hold-row", "hold-row-and-balances", "expired-early", "balances"],
)
async def test_run_check_notices_a_hold_released_by_hand(
    container: Container, statements: list[str], accounts: list[str], hold: str | None
) -> None:
    """Holds are the one mutable record: a hold released by hand (its row, its balances, or
    both kept consistent) must still disagree with the transfers, which cannot be edited."""
    db = container.db
    await _seed(db)
    for sql in statements:
        await _execute(db, sql)
    report = await run_check(db)
    assert not report.ok
    named = sorted(p.split()[3].rstrip(":") for p in report.problems if " account " in p)
    assert named == accounts
    holds = [p for p in report.problems if p.startswith("invariant 2: hold ")]
    assert holds == ([f"invariant 2: hold hold: {hold}"] if hold else [])
    assert not any(p.startswith("invariant 1") for p in report.problems)  # both sides moved


async def test_run_check_accepts_every_way_a_hold_resolves(
    container: Container, clock: FixedClock
) -> None:
    """Post, void, lazy expiry (a batch deciding on the limited account) and the sweeper (the
    only one to release a hold between two unconstrained accounts, ADR 0016)."""
    db = container.db
    await _seed(db)
    holds = [
        _t(f"h{n}", "wallet", "shop", 10, flags=TransferFlag.PENDING, timeout_s=5) for n in range(4)
    ]
    holds.append(_t("h4", "world", "shop", 10, flags=TransferFlag.PENDING, timeout_s=5))
    assert await _post(db, *holds) == ["ok"] * 5
    post = TransferInput("p0", None, None, 4, None, None, TransferFlag.POST_PENDING, "h0")
    void = TransferInput("v1", None, None, None, None, None, TransferFlag.VOID_PENDING, "h1")
    assert await _post(db, post, void) == ["ok", "ok"]
    clock.advance(5)
    assert await _post(db, _t("t", "wallet", "shop", 1)) == ["ok"]  # releases h2, h3 lazily
    assert await _hold_state(db, "h3") == "expired"
    assert await _hold_state(db, "h4") == "pending"  # world and shop decide nothing
    report = await run_check(db)
    assert report.ok, report.lines()
    async with db.transaction() as uow:
        swept = await service.sweep_expired_holds(uow)
    assert [h.transfer_id for h in swept] == ["h4"]
    assert await _hold_state(db, "h4") == "expired"
    report = await run_check(db)
    assert report.ok, report.lines()


async def test_run_check_notices_missing_triggers(container: Container) -> None:
    db = container.db
    await _seed(db)
    if db.is_postgres:
        await _execute(db, "DROP TRIGGER ledger_transfers_append_only ON ledger_transfers")
    else:
        await _execute(db, "DROP TRIGGER ledger_transfers_no_update")
    report = await run_check(db)
    assert report.problems == ["invariant 3: ledger_transfers lacks its append-only triggers"]


# --- lazy expiry, as stored --------------------------------------------------------------------


async def _post(db: Database, *transfers: TransferInput) -> list[str]:
    async with db.transaction() as uow:
        return await service.post(uow, list(transfers))


async def _hold_state(db: Database, hold_id: str) -> str:
    async with db.transaction(write=False) as uow:
        query = sa.text("SELECT state FROM ledger_holds WHERE transfer_id = :id")
        return str((await uow.conn.execute(query, {"id": hold_id})).scalar_one())


async def test_an_expired_hold_counts_until_its_expiry_and_not_after(
    container: Container, clock: FixedClock
) -> None:
    db = container.db
    await _seed(db)  # wallet: 100 in, 30 held until +60 s
    clock.advance(60, us=-1)
    assert await _post(db, _t("t1", "wallet", "world", 71)) == ["exceeds_credits"]
    clock.advance(us=1)
    assert await _post(db, _t("t1", "wallet", "world", 100)) == ["ok"]  # no sweeper needed
    assert await _balances(db, "wallet") == (0, 100, 0, 100)
    assert await _balances(db, "shop") == (0, 20, 0, 50)  # its side released in the same commit
    assert await _hold_state(db, "hold") == "expired"
    assert await _post(db, _post_of("hold")) == ["pending_transfer_expired"]
    async with db.transaction() as uow:
        assert await service.sweep_expired_holds(uow) == []
    assert (await run_check(db)).ok


@pytest.mark.parametrize("side", ["debit", "credit"])
async def test_a_batch_deciding_on_a_limited_side_of_an_expired_hold_releases_it(
    container: Container, clock: FixedClock, side: str
) -> None:
    """The hold is wallet (a limit) → shop (none). A batch naming wallet decides on its balance
    and releases the hold first; one naming only shop decides nothing and leaves it to the
    sweeper (ADR 0016) — the pending amount stays visible on both sides meanwhile."""
    db = container.db
    await _seed(db)
    clock.advance(60)
    touch = _t("t1", "world", "wallet" if side == "debit" else "shop", 1)
    assert await _post(db, touch) == ["ok"]
    released = side == "debit"
    assert (await _balances(db, "wallet"))[0] == (0 if released else 30)
    assert (await _balances(db, "shop"))[2] == (0 if released else 30)
    assert await _hold_state(db, "hold") == ("expired" if released else "pending")
    assert (await run_check(db)).ok
    async with db.transaction() as uow:
        swept = await service.sweep_expired_holds(uow)
    assert [h.transfer_id for h in swept] == ([] if released else ["hold"])
    assert await _hold_state(db, "hold") == "expired"
    assert (await run_check(db)).ok


async def test_the_sweeper_releases_expired_holds_no_batch_touched(
    container: Container, clock: FixedClock
) -> None:
    db = container.db
    await _seed(db)
    async with db.transaction() as uow:
        assert await service.sweep_expired_holds(uow) == []
    clock.advance(60)
    async with db.transaction() as uow:
        [expired] = await service.sweep_expired_holds(uow)
    assert (expired.transfer_id, expired.resolved_us) == ("hold", clock.now_us())
    assert await _balances(db, "wallet") == (0, 0, 0, 100)
    assert await _hold_state(db, "hold") == "expired"
    assert await _post(db, _post_of("hold")) == ["pending_transfer_expired"]
    assert (await run_check(db)).ok


def _post_of(hold_id: str) -> TransferInput:
    return TransferInput(
        f"post-{hold_id}", None, None, None, None, None, TransferFlag.POST_PENDING, hold_id
    )
