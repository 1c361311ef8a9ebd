"""Review s6e: settling renewals answered ``processing`` (then ``_settle_unsettled``, now
``_settle_renewals`` over the durable record of ADR 0019).

Each test here demonstrates a bug found in review: it fails on the code it was written against.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from hammerlock.auctions import storage as auction_storage
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from tests.auctions.conftest import Market
from tests.auctions.deposit_support import deposit_intents, make_deposit, order_of, wire
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.review_s6e")
_DAY = 86_400


async def _unanswered(container: Container) -> list[str]:
    """Renewals whose answer is not in (``open`` attempts with an intent: ADR 0019)."""
    async with container.db.read() as uow:
        rows = await auction_storage.unsettled_renewals(uow, after=("", 0), limit=100)
    return [r.intent_id for r in rows if r.state.value == "open" and r.intent_id is not None]


async def test_a_processing_renewal_is_voided_once_pay_captured_the_old_authorization(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """The winner's kept deposit (row (KEPT, W, v)) is renewed in the payment window; the
    renewal X (key ``…:v{v}``) is authorized at the gateway but its answer is lost:
    ``processing``, remembered in ``unsettled`` as (deposit, v). The buyer then pays: escrow
    captures W. Nothing writes the deposit row after that, so it stays at version v and
    ``_settle_unsettled`` keeps X forever ("the next renewal pass resumes it") — but no pass
    ever does: ``_renew_one`` stops at once because W is no longer ``requires_capture``. The
    janitor resolves X to ``requires_capture`` and it stays held on the buyer's card, beside
    the captured deposit, until it lapses days later."""
    escrow = wire(container, gateway)
    auctions = container.auctions
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller, estimate=2_000_000, reserve_price=10_000, payment_window_s=7 * _DAY
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(3_601)
    assert (await auctions.scheduler_pass(SYSTEM))["closed"] == 1
    order = await order_of(container, lot["id"])
    assert order["deposit_intent_id"] == first

    clock.advance(4.1 * _DAY)  # within a day of the first authorization's lapse
    gateway.faults.add("timeout_after_charge")  # the renewal: authorized, answer lost
    assert await auctions.renew_deposits(SYSTEM) == 0
    [renewal] = await _unanswered(container)

    paid, _ = await escrow.pay(SYSTEM, order["id"], payment_method=None)
    assert paid.status.value == "paid"
    assert paid.deposit_intent_id == first

    for _ in range(3):
        await container.payments.janitor_pass(SYSTEM)  # resolves the processing renewal
        clock.advance(120)
        await auctions.scheduler_pass(SYSTEM)
    intent, _ = await container.payments.get(renewal)
    held = [
        i.id
        for i in await deposit_intents(container, lot["id"])
        if i.status.value == "requires_capture"
    ]
    # What goes wrong: the renewal is held on the card of a buyer who has paid.
    assert held == [], (intent.status.value, await _unanswered(container))


async def test_one_unsettled_renewal_failing_to_settle_does_not_stop_every_renewal(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_settle_unsettled`` runs at the start of ``renew_deposits`` with no per-entry guard
    (``_renew_one`` has one: "one deposit's renewal failing is logged and never stops the
    others", docs/auctions.md). An unexpected error voiding one remembered renewal (here a
    bug-like error from the cancel) raises out of ``renew_deposits`` before the scan — and,
    the entry being kept, on every pass after: this process never renews any deposit again,
    and the lots whose deposits it alone would renew lapse."""
    wire(container, gateway)
    auctions = container.auctions
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot1 = await market.lot(
        seller,
        estimate=2_000_000,
        ends_at=format_rfc3339(clock.now_us() + int(4.5 * _DAY) * 1_000_000),
    )
    lot2 = await market.lot(
        seller,
        estimate=2_000_000,
        ends_at=format_rfc3339(clock.now_us() + 8 * _DAY * 1_000_000),
    )
    await make_deposit(market, lot1["id"], a)
    clock.advance(0.5 * _DAY)
    second = (await make_deposit(market, lot2["id"], b))["payment_intent"]["id"]

    clock.advance(3.6 * _DAY)  # lot 1's deposit is due, lot 2's not yet
    gateway.faults.add("timeout_after_charge")
    assert await auctions.renew_deposits(SYSTEM) == 0
    [renewal] = await _unanswered(container)
    clock.advance(0.4 * _DAY + 1)
    auctions.renewed_us = clock.now_us()
    assert (await auctions.scheduler_pass(SYSTEM))["closed"] == 1  # lot 1 unsold: row moves

    real_cancel = container.payments.cancel

    async def cancel(ctx: Context, intent_id: str, **kw: Any) -> Any:
        if intent_id == renewal:
            raise RuntimeError("unexpected")
        return await real_cancel(ctx, intent_id, **kw)

    monkeypatch.setattr(container.payments, "cancel", cancel)
    clock.advance(0.2 * _DAY)  # lot 2's deposit is due now
    renewed = 0
    for _ in range(3):
        clock.advance(120)
        with contextlib.suppress(RuntimeError):
            renewed += await auctions.renew_deposits(SYSTEM)
    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot2["id"], b.id)
    # What goes wrong: lot 2's deposit is never renewed by this process.
    assert deposit.payment_intent != second
    assert renewed == 1
