"""A deposit left ``pending`` by a process that died after payments made its authorization (and
before the deposit recorded it) still has its hold voided when the lot's deposits are released."""

from __future__ import annotations

from typing import Any

import pytest

from hammerlock.auctions import storage as auction_storage
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from tests.auctions.conftest import Market
from tests.auctions.deposit_support import deposit_intents, make_deposit, wire
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.pending_deposit")


async def test_a_pending_deposits_authorization_is_voided_at_release(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller, estimate=2_000_000, ends_at=format_rfc3339(clock.now_us() + 3_600 * 1_000_000)
    )
    real_create = container.payments.create

    async def authorized_then_dies(ctx: Context, new: Any, **kw: Any) -> Any:
        await real_create(ctx, new, **kw)
        raise RuntimeError("the process dies before the deposit records its intent")

    monkeypatch.setattr(container.payments, "create", authorized_then_dies)
    with pytest.raises(RuntimeError):
        await container.auctions.create_deposit(
            SYSTEM, lot["id"], bidder_id=a.id, idempotency_key=None
        )
    monkeypatch.undo()
    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot["id"], a.id)
    assert (deposit.status.value, deposit.payment_intent) == ("pending", None)
    [intent] = await deposit_intents(container, lot["id"])
    assert intent.status.value == "requires_capture"  # held on the card

    clock.advance(3_601)
    assert (await container.auctions.scheduler_pass(SYSTEM))["closed"] == 1  # unsold
    await container.auctions.scheduler_pass(SYSTEM)
    [intent] = await deposit_intents(container, lot["id"])
    assert intent.status.value == "canceled"
    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot["id"], a.id)
        finished = await auction_storage.get_lot(uow, lot["id"])
    assert deposit.status.value == "released"
    assert finished is not None
    assert finished.deposits_released


async def test_lots_whose_release_stays_unfinished_do_not_starve_the_others(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lot whose deposit void stays unresolved is still pending release on every pass; the
    queue is read round-robin (db.queues), so lots after a page of those are released."""
    wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    ends = format_rfc3339(clock.now_us() + 3_600 * 1_000_000)
    ids = []
    for _ in range(3):
        lot = await market.lot(seller, estimate=2_000_000, ends_at=ends)
        await make_deposit(market, lot["id"], a)
        ids.append(lot["id"])
    stuck, last = sorted(ids)[:2], max(ids)
    auctions = container.auctions
    monkeypatch.setattr(auctions, "close_batch", 1)
    real_release = auctions.release_deposits

    async def release(ctx: Context, lot_id: str) -> int:
        if lot_id in stuck:
            return 0  # its void is still in flight: pending again next pass, no error
        return await real_release(ctx, lot_id)

    monkeypatch.setattr(auctions, "release_deposits", release)
    clock.advance(3_601)
    for _ in range(3):
        await auctions.scheduler_pass(SYSTEM)  # one close per pass (close_batch 1)
    for _ in range(3):
        await auctions.scheduler_pass(SYSTEM)
    async with container.db.read() as uow:
        finished = await auction_storage.get_lot(uow, last)
    assert finished.deposits_released
