"""``post(..., ensure=...)`` and ``create_missing``: what ``create_accounts`` before a post did,
in fewer statements, with the same answers."""

from __future__ import annotations

import pytest

from hammerlock.bootstrap import Container
from hammerlock.ledger import service as ledger
from hammerlock.ledger.check import run_check
from hammerlock.ledger.errors import TransferNotFound
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    LedgerInvariantError,
    TransferFlag,
    TransferInput,
)

FREE = AccountFlag(0)
LIMIT = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS


def _account(account_id: str, flags: AccountFlag = FREE, code: str = "gateway") -> AccountInput:
    return AccountInput(account_id, "USD", code, flags, "{}")


def _hold(transfer_id: str, debit: str, credit: str, amount: int) -> TransferInput:
    return TransferInput(
        id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        currency="USD",
        code="payment.authorize",
        flags=TransferFlag.PENDING,
    )


async def _balances(container: Container, account_id: str) -> tuple[int, int]:
    async with container.db.read() as uow:
        b = (await ledger.get_account(uow, account_id)).balances
    return b.debits_pending, b.credits_pending


async def test_post_creates_the_missing_accounts_it_is_asked_to(container: Container) -> None:
    ensure = ledger.Ensure([_account("gateway:t:USD"), _account("dest:a", code="d")], "test")
    async with container.db.transaction() as uow:
        results = await ledger.post(
            uow, [_hold("h1", "gateway:t:USD", "dest:a", 500)], ensure=ensure
        )
    assert results == ["ok"]
    assert await _balances(container, "gateway:t:USD") == (500, 0)
    assert await _balances(container, "dest:a") == (0, 500)
    # existing ones (same attributes) are fine, and only read
    async with container.db.transaction() as uow:
        results = await ledger.post(
            uow, [_hold("h2", "gateway:t:USD", "dest:a", 200)], ensure=ensure
        )
    assert results == ["ok"]
    assert await _balances(container, "gateway:t:USD") == (700, 0)
    report = await run_check(container.db)
    assert report.ok, report.lines()


async def test_an_account_ensured_but_not_posted_on_is_created(container: Container) -> None:
    async with container.db.transaction() as uow:
        await ledger.create_accounts(
            uow, None, [_account("a:1"), _account("a:2", code="d")], public=False
        )
    ensure = ledger.Ensure([_account("a:3", code="x")], "test")
    async with container.db.transaction() as uow:
        assert await ledger.post(uow, [_hold("h", "a:1", "a:2", 5)], ensure=ensure) == ["ok"]
    assert await _balances(container, "a:3") == (0, 0)


@pytest.mark.parametrize("check_existing", [True, False])
async def test_an_existing_account_with_other_attributes(
    container: Container, check_existing: bool
) -> None:
    async with container.db.transaction() as uow:
        await ledger.create_accounts(
            uow, None, [_account("g:1", LIMIT), _account("d:1", code="d")], public=False
        )
    ensure = ledger.Ensure([_account("g:1")], "test accounts", check_existing=check_existing)
    transfer = TransferInput(
        id="t1",
        debit_account_id="d:1",
        credit_account_id="g:1",
        amount=1,
        currency="USD",
        code="x",
    )
    if check_existing:  # as create_accounts answered: exists_with_different_flags
        with pytest.raises(LedgerInvariantError, match=r"test accounts.*different_flags"):
            async with container.db.transaction() as uow:
                await ledger.post(uow, [transfer], ensure=ensure)
        async with container.db.read() as uow:
            with pytest.raises(TransferNotFound):
                await ledger.get_transfer(uow, "t1")
    else:
        async with container.db.transaction() as uow:
            assert await ledger.post(uow, [transfer], ensure=ensure) == ["ok"]


async def test_create_missing_answers_as_create_accounts(container: Container) -> None:
    async with container.db.transaction() as uow:
        await ledger.create_accounts(uow, None, [_account("m:1")], public=False)
    wanted = [_account("m:1"), _account("m:2", LIMIT), _account("m:1b", code="other")]
    async with container.db.transaction() as uow:
        missing = await ledger.create_missing(uow, wanted[1:])
        # one created meanwhile (here: before) is read back and answered for
        again = await ledger.create_missing(uow, [_account("m:1", LIMIT)])
    assert [(r.id, r.result) for r in missing] == [("m:2", "ok"), ("m:1b", "ok")]
    assert [(r.id, r.result) for r in again] == [("m:1", "exists_with_different_flags")]
    async with container.db.transaction() as uow:
        expected = await ledger.create_accounts(uow, None, wanted, public=False)
    assert [r.result for r in expected] == ["exists", "exists", "exists"]
