"""Review s6b: deposit renewal after ADR 0018, lot checks, order views.

Each test here demonstrates a bug found in review: it fails on the code it was written against.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest

from hammerlock.auctions import storage as auction_storage
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from tests.auctions.conftest import Market
from tests.auctions.deposit_support import make_deposit, order_of, posted, wire
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.review_s6b")
_DAY = 86_400


async def _kept_deposit_due_for_renewal(
    market: Market, container: Container, clock: FixedClock, *, renew_at_close: bool
) -> tuple[str, str]:
    """A 4-day lot (deposit 200,000) won by one bidder, closed; returns (lot id, first intent).
    With ``renew_at_close`` False the close's pass runs before the kept deposit is due."""
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        reserve_price=10_000,
        ends_at=format_rfc3339(clock.now_us() + 4 * _DAY * 1_000_000),
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(4 * _DAY + 1)
    if not renew_at_close:
        container.auctions.renewed_us = clock.now_us()  # this pass does not scan renewals
    assert (await container.auctions.scheduler_pass(SYSTEM))["closed"] == 1
    return lot["id"], first


# -- 1. two schedulers renewing one deposit: the loser voids the winner's renewal ---------------


async def test_two_schedulers_renewing_one_kept_deposit_leave_the_order_a_live_one(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every API process runs the scheduler, and each scans the renewable deposits once a
    minute from a page read earlier (``renew_deposits``). Process A renews the kept deposit:
    new authorization Y (key ``deposit:{dep}:renew:{X}``), swap committed (deposit and order
    → Y), about to void X. Process B's page read the deposit before A's swap: ``payments.get(X)``
    is still ``requires_capture``, ``payments.create`` with the *same* idempotency key answers
    A's Y (``requires_capture``), B's swap fails on the version, and B voids ``new.id`` — Y, the
    authorization the deposit and the order now point at. A then voids X. Both are dead: a
    default captures no penalty (and for a live lot the bidder's deposit is dead)."""
    wire(container, gateway)
    auctions = container.auctions
    lot_id, first = await _kept_deposit_due_for_renewal(
        market, container, clock, renew_at_close=False
    )
    real_void, real_renew = auctions._void, auctions._renew_one
    stale: list[tuple[Any, ...]] = []
    raced: list[int] = []

    async def renew_one(ctx: Context, deposit: Any, needed: int, now: int) -> int:
        stale.append((deposit, needed, now))  # the page as process B read it too
        return await real_renew(ctx, deposit, needed, now)

    async def void(ctx: Context, intent_id: str) -> Any:
        if stale and not raced and intent_id == first:
            # Process A swapped and is about to void X: process B works on its stale page.
            raced.append(await real_renew(ctx, *stale[0]))
        return await real_void(ctx, intent_id)

    monkeypatch.setattr(auctions, "_renew_one", renew_one)
    monkeypatch.setattr(auctions, "_void", void)
    clock.advance(_DAY // 2)  # the first authorization lapses within a day now
    assert await auctions.renew_deposits(SYSTEM) == 1
    assert raced == [0]
    monkeypatch.undo()

    order = await order_of(container, lot_id)
    assert order["deposit_intent_id"] != first
    live, _ = await container.payments.get(order["deposit_intent_id"])
    # What goes wrong: process B voided the renewal the deposit and the order point at.
    assert live.status.value == "requires_capture", (live.status, live.canceled_reason)


async def test_two_schedulers_renewing_one_kept_deposit_default_still_captures_the_penalty(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same interleaving, followed to the default: the penalty is lost."""
    escrow = wire(container, gateway)
    auctions = container.auctions
    lot_id, first = await _kept_deposit_due_for_renewal(
        market, container, clock, renew_at_close=False
    )
    real_void, real_renew = auctions._void, auctions._renew_one
    stale: list[tuple[Any, ...]] = []
    raced: list[int] = []

    async def renew_one(ctx: Context, deposit: Any, needed: int, now: int) -> int:
        stale.append((deposit, needed, now))
        return await real_renew(ctx, deposit, needed, now)

    async def void(ctx: Context, intent_id: str) -> Any:
        if stale and not raced and intent_id == first:
            raced.append(await real_renew(ctx, *stale[0]))
        return await real_void(ctx, intent_id)

    monkeypatch.setattr(auctions, "_renew_one", renew_one)
    monkeypatch.setattr(auctions, "_void", void)
    clock.advance(_DAY // 2)
    await auctions.renew_deposits(SYSTEM)
    monkeypatch.undo()

    clock.advance(2 * _DAY)  # the payment window (48 h) passes
    await escrow.sweep(SYSTEM)
    order = await order_of(container, lot_id)
    assert order["status"] == "defaulted"
    assert await posted(container, "platform:penalties:USD") == 200_000


# -- 2. a renewal that lost its swap once is never tried again for that authorization ----------


async def test_a_renewal_that_lost_to_the_close_is_tried_again_for_the_kept_deposit(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A held deposit's renewal (page read while the lot is open) loses its swap to the close
    (``_keep_deposit`` turns it ``kept``, version + 1): the renewal Y is voided — right. But the
    kept deposit's renewal on the next pass asks ``payments.create`` with the same key
    ``deposit:{dep}:renew:{X}``: it answers the voided Y, ``_renew_one`` logs
    ``deposit_renewal_failed`` and returns — every pass, until X lapses in the payment window.
    The default then captures no penalty (the bug ADR 0018 set out to fix)."""
    wire(container, gateway)
    auctions = container.auctions
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,  # deposit 200,000
        reserve_price=10_000,
        ends_at=format_rfc3339(clock.now_us() + int(4.6 * _DAY) * 1_000_000),
        soft_close_cap_s=_DAY,  # the lot may outlive the first authorization: renewal is due
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(4.6 * _DAY + 1)

    real_renew = auctions._renew_one
    closed: list[str] = []

    async def renew_one(ctx: Context, deposit: Any, needed: int, now: int) -> int:
        if not closed:  # another process's scheduler closes the lot under this page read
            closed.append((await auctions.close(SYSTEM, lot["id"])).status.value)
        return await real_renew(ctx, deposit, needed, now)

    monkeypatch.setattr(auctions, "_renew_one", renew_one)
    assert await auctions.renew_deposits(SYSTEM) == 0  # lost the swap to the close: voided
    assert closed == ["closed"]
    monkeypatch.undo()

    # The next passes, as in production (once a minute), through the payment window.
    for _ in range(3):
        clock.advance(61)
        await auctions.scheduler_pass(SYSTEM)
    order = await order_of(container, lot["id"])
    live, _ = await container.payments.get(order["deposit_intent_id"])
    assert order["deposit_intent_id"] != first, "the kept deposit was never renewed"
    assert live.status.value == "requires_capture"


# -- 3. an authorization lapsing just after the payment window is never renewed ----------------


async def test_a_deposit_lapsing_just_after_pay_by_is_still_there_for_the_default(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """``_renew_one`` skips a deposit when ``needed_until_us < expires_us``: for a kept deposit
    ``needed_until_us`` is exactly ``pay_by``. But the default is not at ``pay_by``: it is the
    escrow sweeper's first pass after it, while the payments janitor voids an authorization at
    ``authorization_expires_us`` (``authorizations_expiring(before_us=now)``). An authorization
    lapsing 30 s after ``pay_by`` is never renewed; whichever background task runs first
    decides whether the default captures the penalty (and a real gateway's lapse is only
    "about" the brand's days). The renewal needs a margin past ``pay_by``."""
    escrow = wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    t0 = clock.now_us()
    lot = await market.lot(
        seller,
        estimate=2_000_000,  # deposit 200,000
        reserve_price=10_000,
        payment_window_s=5 * _DAY - 3_631,  # pay_by = the authorization's lapse - 30 s
    )
    dep = await make_deposit(market, lot["id"], a)
    expires = dep["payment_intent"].get("authorization_expires_at")
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(3_601)
    assert (await container.auctions.scheduler_pass(SYSTEM))["closed"] == 1
    order = await order_of(container, lot["id"])
    first, _ = await container.payments.get(order["deposit_intent_id"])
    assert first.authorization_expires_us == t0 + 5 * _DAY * 1_000_000, expires
    assert order["pay_by_us"] == first.authorization_expires_us - 30_000_000

    # The background tasks, as in production, through the payment window (renewals included).
    while clock.now_us() < order["pay_by_us"] + 60_000_000:
        clock.advance(min(3_600, (order["pay_by_us"] + 60_000_000 - clock.now_us()) / 1e6))
        await container.auctions.scheduler_pass(SYSTEM)
        container.auctions.renewed_us = 0
    await container.payments.janitor_pass(SYSTEM)
    await escrow.sweep(SYSTEM)
    order = await order_of(container, lot["id"])
    assert order["status"] == "defaulted"
    kept, _ = await container.payments.get(order["deposit_intent_id"])
    assert await posted(container, "platform:penalties:USD") == 200_000, (
        kept.status,
        kept.canceled_reason,
    )


# -- 4. more than 16 lots that fail to close stop every lot due after them, every pass -------------


async def test_lots_failing_to_close_never_stop_the_lots_due_after_them(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/auctions.md "Closing": a lot whose close fails "never stops the lots due after it;
    every pass tries it again". ``_open_and_close_due`` re-raises once ``_MAX_FAILED_PER_PASS``
    (16) lots were set aside in a pass; ``claim_due`` takes the oldest due first, and the failing
    lots stay due, so every pass meets the same 17 first and raises: a lot ending after them
    never closes (one systematic bug in 17 lots stops the house's closing)."""
    seller = await market.party("seller")
    bad: set[str] = set()
    for i in range(17):
        lot = await market.lot(
            seller, ends_at=format_rfc3339(clock.now_us() + (60 + i) * 1_000_000)
        )
        bad.add(lot["id"])
    good = await market.lot(seller, ends_at=format_rfc3339(clock.now_us() + 600 * 1_000_000))
    auctions = container.auctions
    real_close = auctions._close_locked

    async def close_locked(uow: Any, ctx: Context, lot: Any, *, reason: str) -> Any:
        if lot.id in bad:
            raise ValueError("a value nothing foresaw")  # the bug these lots share
        return await real_close(uow, ctx, lot, reason=reason)

    monkeypatch.setattr(auctions, "_close_locked", close_locked)
    clock.advance(601)
    for _ in range(3):
        with contextlib.suppress(ValueError):  # the scheduler task logs it, runs the next pass
            await auctions.scheduler_pass(SYSTEM)
        clock.advance(1)
    assert (await market.get(good["id"]))["status"] == "unsold"


async def test_two_schedulers_renewing_one_held_deposit_leave_the_bidder_a_live_one(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 1 on a live lot: the held deposit ends on the voided renewal and the bidder's
    next bid is refused ``deposit_required`` (and, if it leads at the close, the order is
    opened on a dead deposit)."""
    wire(container, gateway)
    auctions = container.auctions
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        ends_at=format_rfc3339(clock.now_us() + 10 * _DAY * 1_000_000),
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    await make_deposit(market, lot["id"], b)
    assert (await market.bid(lot["id"], a, 5_000)).status_code == 201
    real_void, real_renew = auctions._void, auctions._renew_one
    stale: list[tuple[Any, ...]] = []
    raced: list[int] = []

    async def renew_one(ctx: Context, deposit: Any, needed: int, now: int) -> int:
        if deposit.payment_intent == first:
            stale.append((deposit, needed, now))
        return await real_renew(ctx, deposit, needed, now)

    async def void(ctx: Context, intent_id: str) -> Any:
        if stale and not raced and intent_id == first:
            raced.append(await real_renew(ctx, *stale[0]))
        return await real_void(ctx, intent_id)

    monkeypatch.setattr(auctions, "_renew_one", renew_one)
    monkeypatch.setattr(auctions, "_void", void)
    clock.advance(4 * _DAY + 3_600)  # within a day of the first authorization's lapse
    await auctions.renew_deposits(SYSTEM)
    assert raced == [0]
    monkeypatch.undo()

    assert (await market.bid(lot["id"], b, 10_000)).status_code == 201
    r = await market.bid(lot["id"], a, 20_000)
    assert r.status_code == 201, r.text


async def test_a_declined_renewal_is_tried_again_six_hours_later(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same payments key would answer the same declined intent forever: six hours after a
    decline the row gets a new version, and with it the retry a new key (until the old
    authorization lapses)."""
    wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller, estimate=2_000_000, ends_at=format_rfc3339(clock.now_us() + 6 * _DAY * 1_000_000)
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    real_create = container.payments.create
    declined: list[str] = []

    async def create(ctx: Context, new: Any, **kw: Any) -> Any:
        if ":renew:" in kw["idempotency_key"] and not declined:
            declined.append(kw["idempotency_key"])
            new = dataclasses.replace(new, payment_method="tok_decline_renewal")
        return await real_create(ctx, new, **kw)

    monkeypatch.setattr(container.payments, "create", create)
    auctions = container.auctions
    clock.advance(4.1 * _DAY)
    assert (await auctions.scheduler_pass(SYSTEM))["renewed"] == 0  # declined
    clock.advance(61)
    assert (await auctions.scheduler_pass(SYSTEM))["renewed"] == 0  # same slot, same answer
    clock.advance(6 * 3_600)
    assert (await auctions.scheduler_pass(SYSTEM))["renewed"] == 1
    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot["id"], a.id)
    assert deposit.payment_intent not in {None, first}
    live, _ = await container.payments.get(deposit.payment_intent)
    assert live.status.value == "requires_capture"
    old, _ = await container.payments.get(first)
    assert old.status.value == "canceled"
