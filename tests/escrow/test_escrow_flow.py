"""The order lifecycle through the service: every path's money lands where docs/escrow.md says."""

from __future__ import annotations

import asyncio
import random

import pytest

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.errors import InvalidTransition, OrderNotFound
from hammerlock.escrow.model import OrderStatus, PayoutStatus
from hammerlock.escrow.service import _fresh_order_id
from hammerlock.ledger import service as ledger
from hammerlock.ledger.errors import AccountNotFound
from hammerlock.security.pan import contains_pan
from tests.escrow.conftest import SYSTEM, open_test_order, party_ctx
from tests.payments.fake_gateway import FakeGateway

BUYER = party_ctx("bid_buyer", "bidder")
SELLER = party_ctx("sel_seller", "seller")
OPERATOR = party_ctx("op_1", "operator")


async def balance(container: Container, account: str) -> int:
    async with container.db.transaction(write=False) as uow:
        try:
            b = (await ledger.get_account(uow, account)).balances
        except AccountNotFound:
            return 0
    return b.credits_posted - b.debits_posted


async def test_pay_ship_confirm_inspect_release_payout(
    container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    del gateway
    escrow = container.escrow
    opened = await open_test_order(container, hammer=100_000, deposit=20_000)
    order, intent = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    assert intent is not None
    assert intent.amount == 125_000 - 20_000
    assert order.status is OrderStatus.PAID
    assert await balance(container, f"escrow:{order.id}") == 125_000
    order = await escrow.ship(SELLER, order.id, carrier="ups", tracking="1Z999AA10123456784")
    order = await escrow.confirm_delivery(BUYER, order.id)
    assert order.status is OrderStatus.DELIVERED
    clock.advance(601)
    counts = await escrow.sweep(SYSTEM)
    assert counts["released"] == 1
    after = (await escrow.get(SYSTEM, order.id)).order
    assert after.status is OrderStatus.RELEASED
    assert after.payout_status is PayoutStatus.PAID
    assert await balance(container, f"escrow:{order.id}") == 0
    assert await balance(container, "seller:sel_seller:payable:USD") == 0
    assert await balance(container, "platform:revenue:USD") == 25_000 + 10_000


async def test_dispute_partial_refund(container: Container, gateway: FakeGateway) -> None:
    escrow = container.escrow
    opened = await open_test_order(container, hammer=100_000, deposit=20_000)
    order, _ = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    await escrow.ship(SELLER, order.id, carrier="dhl", tracking="1234567890")
    await escrow.confirm_delivery(BUYER, order.id)
    await escrow.dispute(BUYER, order.id, reason="scratched")
    with pytest.raises(InvalidTransition):
        await escrow.accept(BUYER, order.id)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=115_000)
    assert order.status is OrderStatus.RELEASED
    assert order.refunded_amount == 115_000
    assert order.refunds_outstanding == 0
    assert await balance(container, f"escrow:{order.id}") == 0
    # 115,000 of 125,000 refunded: hammer keeps 8,000, premium 2,000, commission 800
    assert order.released_to_seller == 7_200
    assert order.released_to_revenue == 2_800
    assert sum(r.amount for r in gateway.refunds.values()) == 115_000


async def test_default_then_second_chance(
    container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    del gateway
    escrow = container.escrow
    opened = await open_test_order(
        container, hammer=100_000, deposit=20_000, runner_up=("bid_second", 90_000), card=None
    )
    clock.advance(3_601)
    counts = await escrow.sweep(SYSTEM)
    assert counts["defaulted"] == 1
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.status is OrderStatus.DEFAULTED
    assert await balance(container, "platform:penalties:USD") == 20_000
    with pytest.raises(OrderNotFound):
        await escrow.accept_offer(BUYER, order.id)
    second = await escrow.accept_offer(party_ctx("bid_second", "bidder"), order.id)
    assert second.hammer_price == 90_000
    assert second.buyer_id == "bid_second"
    assert second.status is OrderStatus.AWAITING_PAYMENT


def test_order_ids_never_look_like_card_numbers() -> None:
    """A random hex id holds a Luhn-valid, brand-prefixed digit run about 3 times in 10,000;
    the API's card-number guard would refuse every URL naming such an order."""
    rng = random.Random(6)
    start = 1_767_225_600_000_000
    for _ in range(20_000):
        order_id = _fresh_order_id(rng.randrange(start, start + 10 * 365 * 86_400 * 10**6))
        assert not contains_pan(order_id)


async def test_racing_releases_release_once(
    container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    """The buyer's accept, a second accept and the sweeper's inspection end race on one order
    (real connections on PostgreSQL): exactly one releases; the others lose cleanly."""
    del gateway
    escrow = container.escrow
    opened = await open_test_order(container, hammer=100_000)
    await escrow.pay(BUYER, opened.order_id, payment_method=None)
    await escrow.ship(SELLER, opened.order_id, carrier="dhl", tracking="1234567890")
    await escrow.confirm_delivery(BUYER, opened.order_id)
    clock.advance(601)
    results = await asyncio.gather(
        escrow.accept(BUYER, opened.order_id),
        escrow.accept(BUYER, opened.order_id),
        escrow.sweep(SYSTEM),
        return_exceptions=True,
    )
    accepted = [r for r in results[:2] if not isinstance(r, BaseException)]
    lost = [r for r in results[:2] if isinstance(r, InvalidTransition)]
    swept = results[2]
    assert isinstance(swept, dict), swept
    assert len(accepted) + swept["released"] == 1, results
    assert len(lost) == 2 - len(accepted), results
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.status is OrderStatus.RELEASED
    assert order.payout_status is PayoutStatus.PAID
    assert await balance(container, f"escrow:{order.id}") == 0
    assert await balance(container, "seller:sel_seller:payable:USD") == 0
