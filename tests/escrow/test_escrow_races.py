"""Two races fixed in 3c1d34f, raced for real on PostgreSQL (separate connections, one task
paused at a barrier mid-flight while the other commits). Each test fails with the fix reverted.

(a) A deposit captured between ``pay``'s two reads of it (its capture timed out, then the
    payments janitor finished it) must go into escrow before the rest is charged: the buyer
    pays the total, never total + deposit.
(b) A ``pay`` that loses the race with the sweeper's default must cancel the intent it made
    instead of confirming a charge on a defaulted order.

After each: money is conserved (``hammerlock ledger check``'s ``run_check`` is clean).
"""

from __future__ import annotations

import asyncio

import pytest

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.model import OrderStatus
from hammerlock.escrow.service import Escrow, EscrowConfig
from hammerlock.ledger.check import run_check
from hammerlock.payments.gateways.base import Charge, GatewayTimeout
from hammerlock.payments.model import IntentStatus
from tests.escrow.conftest import SYSTEM, install, open_test_order
from tests.escrow.test_escrow_flow import BUYER, balance
from tests.payments.fake_gateway import FakeGateway

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

ROUNDS = 4
_BARRIER_S = 10.0


class GatedCapture(FakeGateway):
    """The next capture call, once armed, waits at a barrier and then times out (the
    gateway never answers it); every other call goes through."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.inside = asyncio.Event()
        self.release = asyncio.Event()

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        if self.armed:
            self.armed = False
            self.inside.set()
            await asyncio.wait_for(self.release.wait(), _BARRIER_S)
            raise GatewayTimeout("gated: no answer")
        return await super().capture(gateway_key, amount)


async def _money_conserved(container: Container) -> None:
    report = await run_check(container.db)
    assert report.ok, report.lines()


async def test_a_deposit_captured_between_two_reads_is_not_charged_twice(
    container: Container, clock: FixedClock
) -> None:
    gateway = GatedCapture()
    escrow = install(container, gateway)
    for _ in range(ROUNDS):
        opened = await open_test_order(container, hammer=100_000, deposit=20_000)
        # A first pay: the deposit's capture times out, so it stays processing; no rest yet.
        gateway.faults.add("timeout_after_capture")
        order, intent = await escrow.pay(BUYER, opened.order_id, payment_method=None)
        assert intent is None
        assert order.deposit_in_escrow == 0
        deposit, _ = await container.payments.get(opened.terms.deposit_intent_id or "")
        assert deposit.status is IntentStatus.PROCESSING
        # A second pay reads the deposit (processing) and retries its capture, which hangs;
        # meanwhile the janitor learns it was captured; then the retry times out and pay reads
        # the deposit again: succeeded.
        gateway.armed, gateway.inside, gateway.release = True, asyncio.Event(), asyncio.Event()
        paying = asyncio.create_task(escrow.pay(BUYER, opened.order_id, payment_method=None))
        await asyncio.wait_for(gateway.inside.wait(), _BARRIER_S)
        clock.advance(1)
        await container.payments.janitor_pass(SYSTEM)
        deposit, _ = await container.payments.get(deposit.id)
        assert deposit.status is IntentStatus.SUCCEEDED
        gateway.release.set()
        order, rest = await paying
        assert rest is not None
        assert rest.amount == 125_000 - 20_000, "the rest charged the deposit a second time"
        assert order.status is OrderStatus.PAID
        assert order.deposit_in_escrow == 20_000
        assert await balance(container, f"escrow:{order.id}") == 125_000
        assert await balance(container, f"deposit:bid_buyer:{order.lot_id}") == 0
        await _money_conserved(container)


async def test_a_pay_losing_to_the_default_is_never_confirmed(
    container: Container, clock: FixedClock
) -> None:
    gateway = FakeGateway()
    install(container, gateway)
    inside, release = asyncio.Event(), asyncio.Event()
    gated = {"on": False}

    async def card_on_file(uow: object, bidder_id: str) -> str | None:
        del uow
        if gated["on"]:
            gated["on"] = False
            inside.set()
            await asyncio.wait_for(release.wait(), _BARRIER_S)
        return f"tok_ok_{bidder_id}"

    escrow = Escrow(
        container.db,
        container.payments,
        container.gateways,
        config=EscrowConfig(sweeper_grace_s=0),
        card_on_file=card_on_file,
    )
    for _ in range(ROUNDS):
        opened = await open_test_order(container, hammer=100_000, deposit=20_000, window_s=60)
        charges = len(gateway.charges)
        inside.clear()
        release.clear()
        gated["on"] = True
        # pay passes its window check, captures the deposit into escrow, then pauses just
        # before the rest's intent is made ...
        paying = asyncio.create_task(escrow.pay(BUYER, opened.order_id, payment_method=None))
        await asyncio.wait_for(inside.wait(), _BARRIER_S)
        # ... while the window closes and the sweeper defaults the order.
        clock.advance(61)
        counts = await escrow.sweep(SYSTEM)
        assert counts["defaulted"] == 1
        release.set()
        order, rest = await paying
        assert order.status is OrderStatus.DEFAULTED
        assert rest is None
        # the rest's intent was made but never confirmed: canceled, nothing sent to the gateway
        assert len(gateway.charges) == charges, "a charge on a defaulted order"
        assert order.payment_intent_id is None
        assert await balance(container, f"escrow:{order.id}") == 0
        assert await balance(container, "platform:penalties:USD") >= 20_000
        await _money_conserved(container)
