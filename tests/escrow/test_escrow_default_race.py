"""A default that looked for the rest's intent before a concurrent ``pay`` made it must stop
that intent too: else the order ends ``defaulted`` (deposit kept) while the buyer can still
finish paying the rest into the escrow of a dead order."""

from __future__ import annotations

import pytest

from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.model import Order, OrderStatus
from hammerlock.escrow.service import Escrow
from hammerlock.ledger.check import run_check
from hammerlock.payments.model import IntentStatus
from tests.escrow.conftest import SYSTEM, open_test_order
from tests.escrow.test_escrow_flow import BUYER, balance
from tests.payments.fake_gateway import FakeGateway


async def test_a_rest_intent_made_during_the_default_is_canceled(
    container: Container, clock: FixedClock, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    del gateway
    escrow: Escrow = container.escrow
    opened = await open_test_order(container, hammer=100_000, deposit=20_000, window_s=60)
    clock.advance(61)
    real_stop_rest = escrow._stop_rest
    raced = {"done": False}

    async def stop_rest_then_pay(ctx: Context, order: Order) -> bool:
        stopped = await real_stop_rest(ctx, order)
        if not raced["done"]:
            raced["done"] = True
            # A pay that passed its window check just before the deadline makes the rest's
            # intent now (a 3-D Secure card: it waits for the buyer's challenge).
            clock.advance(-2)
            await escrow.pay(
                BUYER, opened.order_id, payment_method=f"tok_3ds_{opened.terms.lot_id}"
            )
            clock.advance(2)
        return stopped

    monkeypatch.setattr(escrow, "_stop_rest", stop_rest_then_pay)
    order = await escrow.default(SYSTEM, opened.order_id)

    assert raced["done"]
    assert order.status is OrderStatus.DEFAULTED
    assert order.payment_intent_id is not None
    rest, _ = await container.payments.get(order.payment_intent_id)
    assert rest.status is IntentStatus.CANCELED, "the rest can still be paid on a defaulted order"
    assert await balance(container, f"escrow:{order.id}") == 0
    assert await balance(container, "platform:penalties:USD") >= 20_000
    report = await run_check(container.db)
    assert report.ok, report.lines()
