"""Escrow refuses to follow a kept deposit's renewal from an hour before the order's payment
deadline on: a default may be capturing the deposit it read, and a swap committing then could
let a second default capture the other authorization (reviews of ADR 0019)."""

from __future__ import annotations

from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from hammerlock.escrow import service as escrow_service
from tests.auctions.conftest import Market
from tests.auctions.deposit_support import deposit_intents, make_deposit, order_of, wire
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.renewal_deadline")


async def test_no_swap_from_the_payment_deadline_on(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        reserve_price=10_000,
        ends_at=format_rfc3339(clock.now_us() + 3_600 * 1_000_000),
    )
    await make_deposit(market, lot["id"], a)
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(3_601)
    assert (await container.auctions.scheduler_pass(SYSTEM))["closed"] == 1
    order = await order_of(container, lot["id"])
    kept = order["deposit_intent_id"]

    cutoff_s = (order["pay_by_us"] - clock.now_us()) / 1_000_000 - 3_600  # an hour before
    clock.advance(cutoff_s - 1)
    async with container.db.transaction() as uow:
        assert await escrow_service.renew_deposit(uow, SYSTEM, kept, "pi_renewal_before")
        assert await escrow_service.renew_deposit(uow, SYSTEM, "pi_renewal_before", kept)
    clock.advance(1)  # an hour before the deadline: no swap may commit near it
    async with container.db.transaction() as uow:
        assert not await escrow_service.renew_deposit(uow, SYSTEM, kept, "pi_renewal_after")
    assert (await order_of(container, lot["id"]))["deposit_intent_id"] == kept


async def test_a_refused_renewal_puts_no_new_hold_on_the_card(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """The auctions service asks escrow before it authorizes a kept deposit's renewal: within
    the last hour before the deadline the answer is no, and no authorization is made only to be
    voided (here the deadline is half an hour after the deposit's lapse, five days on)."""
    wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        reserve_price=10_000,
        payment_window_s=86_400 + 1_800,
        ends_at=format_rfc3339(clock.now_us() + 4 * 86_400 * 1_000_000),
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(4 * 86_400 + 1)
    container.auctions.renewed_us = clock.now_us()  # the close's pass does not renew
    assert (await container.auctions.scheduler_pass(SYSTEM))["closed"] == 1
    order = await order_of(container, lot["id"])
    clock.advance((order["pay_by_us"] - clock.now_us()) / 1_000_000 - 2_700)  # 45 min left
    kept, _ = await container.payments.get(first)
    assert kept.authorization_expires_us is not None
    assert clock.now_us() < kept.authorization_expires_us < order["pay_by_us"]  # renewal due
    assert await container.auctions.renew_deposits(SYSTEM) == 0
    assert [i.id for i in await deposit_intents(container, lot["id"])] == [first]
