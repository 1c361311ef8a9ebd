"""Review s6c: deposit renewal with a six-hour slot key, the scheduler's ``set_aside``.

Each test here demonstrates a bug found in review: it fails on the code it was written against.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from hammerlock.auctions import service as auctions_service
from hammerlock.auctions import storage as auction_storage
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from tests.auctions.conftest import Market
from tests.auctions.deposit_support import make_deposit, order_of, posted, wire
from tests.auctions.test_deposit_renewal_races import _kept_deposit_due_for_renewal
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.review_s6c")
_DAY = 86_400
_SLOT_S = 6 * 3_600


# -- 1. a renewal answered "processing" is voided although another process swapped it in --------


async def _shared_renewal_voided_by_its_first_caller(
    container: Container, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """Process A's renewal authorize reaches the gateway (the charge is authorized there) but
    the answer is lost (``GatewayTimeout``): A's ``payments.create`` answers ``processing``.
    Process B's page read the same deposit row (same version, same six-hour slot, so the same
    payments key): its ``payments.create`` finds A's intent, drives it (the gateway knows the
    key: ``requires_capture``), swaps it in and voids the first authorization. A then takes the
    "declined" branch with its stale answer and ``_void``s ``new.id`` unconditionally: the
    authorization the deposit (and the order) now point at. Returns what B's ``_renew_one``
    answered."""
    auctions = container.auctions
    real_renew, real_create = auctions._renew_one, container.payments.create
    stale: list[tuple[Any, ...]] = []
    raced: list[int] = []

    async def renew_one(ctx: Context, deposit: Any, needed: int, now: int) -> int:
        stale.append((deposit, needed, now))  # the page as process B read it too
        return await real_renew(ctx, deposit, needed, now)

    async def create(ctx: Context, new: Any, **kw: Any) -> Any:
        answer = await real_create(ctx, new, **kw)
        if stale and not raced and ":renew:" in kw["idempotency_key"]:
            # A's create answered (processing); B runs its renewal of the same row now.
            raced.append(-1)
            raced[0] = await real_renew(ctx, *stale[0])
        return answer

    monkeypatch.setattr(auctions, "_renew_one", renew_one)
    monkeypatch.setattr(container.payments, "create", create)
    gateway.faults.add("timeout_after_charge")  # the next authorize is A's renewal
    await auctions.renew_deposits(SYSTEM)
    monkeypatch.undo()
    return raced


async def test_a_renewal_answered_processing_is_not_voided_once_another_process_swapped_it_in(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wire(container, gateway)
    lot_id, first = await _kept_deposit_due_for_renewal(
        market, container, clock, renew_at_close=False
    )
    clock.advance(_DAY // 2)  # the first authorization lapses within a day now
    raced = await _shared_renewal_voided_by_its_first_caller(container, gateway, monkeypatch)
    assert raced == [1]  # B renewed: swapped in and voided the first authorization

    order = await order_of(container, lot_id)
    assert order["deposit_intent_id"] != first
    live, _ = await container.payments.get(order["deposit_intent_id"])
    # What goes wrong: A voided the renewal B swapped in; the first one is voided by B.
    assert live.status.value == "requires_capture", (live.status, live.canceled_reason)


async def test_a_renewal_answered_processing_then_default_still_captures_the_penalty(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same interleaving, followed to the default: the penalty (200,000) is lost."""
    escrow = wire(container, gateway)
    lot_id, _ = await _kept_deposit_due_for_renewal(market, container, clock, renew_at_close=False)
    clock.advance(_DAY // 2)
    await _shared_renewal_voided_by_its_first_caller(container, gateway, monkeypatch)
    clock.advance(2 * _DAY)  # the payment window (48 h) passes
    await escrow.sweep(SYSTEM)
    order = await order_of(container, lot_id)
    assert order["status"] == "defaulted"
    assert await posted(container, "platform:penalties:USD") == 200_000


# -- 2. a renewal left behind in one six-hour slot is never found again: held until it lapses ----


async def test_a_renewal_interrupted_before_its_swap_is_not_left_held_after_the_next_slot(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process stops (a deploy's SIGTERM cancels the scheduler task: ``CancelledError``)
    after ``payments.create`` authorized the renewal X and before the swap. Under the
    version-only key the next attempt on that row found X again and swapped it in. With the
    slot in the key, an attempt in the next six-hour slot (the same deposit row, version
    unchanged) makes a new authorization Y and swaps it in; X is never looked at again and
    stays held on the bidder's card, beside Y, until it lapses days later."""
    wire(container, gateway)
    auctions = container.auctions
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller, estimate=2_000_000, ends_at=format_rfc3339(clock.now_us() + 6 * _DAY * 1_000_000)
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    real_create, real_swap = container.payments.create, auctions._swap
    made: list[str] = []

    async def create(ctx: Context, new: Any, **kw: Any) -> Any:
        intent = await real_create(ctx, new, **kw)
        if ":renew:" in kw["idempotency_key"]:
            made.append(intent.id)
        return intent

    async def swap(*args: Any, **kw: Any) -> bool:
        raise asyncio.CancelledError  # the process stops here

    monkeypatch.setattr(container.payments, "create", create)
    monkeypatch.setattr(auctions, "_swap", swap)
    clock.advance(4.1 * _DAY)  # within a day of the first authorization's lapse
    with pytest.raises(asyncio.CancelledError):
        await auctions.renew_deposits(SYSTEM)
    monkeypatch.setattr(auctions, "_swap", real_swap)

    now_s = clock.now_us() // 1_000_000
    clock.advance(_SLOT_S - now_s % _SLOT_S + 1)  # the next slot, before the first one lapses
    assert await auctions.renew_deposits(SYSTEM) == 1
    monkeypatch.undo()

    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot["id"], a.id)
    assert deposit.payment_intent in made
    old, _ = await container.payments.get(first)
    assert old.status.value == "canceled"
    # What goes wrong: the interrupted renewal is still authorized, with nothing pointing at it.
    made = list(dict.fromkeys(made))
    held = [
        i for i in made if (await container.payments.get(i))[0].status.value == "requires_capture"
    ]
    assert held == [deposit.payment_intent], (made, held)


# -- 3. more failing lots than ``_MAX_SET_ASIDE``: the lots due after them never close -----------


async def test_a_full_set_aside_never_stops_the_lots_due_after_the_failing_ones(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/auctions.md: a failing lot "never stops the lots due after it, however many fail".
    Once ``set_aside`` holds ``_MAX_SET_ASIDE`` (1,000) unexpired lots, the next failing lot is
    not set aside: ``claim_due`` claims that same lot again (oldest first) until the pass has
    16 failures and stops — every pass, while the set stays full (it refills within seconds at
    a pass every 0.5 s). Shown here with the cap scaled down to 2 (three failing lots)."""
    monkeypatch.setattr(auctions_service, "_MAX_SET_ASIDE", 2)
    seller = await market.party("seller")
    bad: set[str] = set()
    for i in range(3):
        lot = await market.lot(
            seller, ends_at=format_rfc3339(clock.now_us() + (60 + i) * 1_000_000)
        )
        bad.add(lot["id"])
    good = await market.lot(seller, ends_at=format_rfc3339(clock.now_us() + 600 * 1_000_000))
    auctions = container.auctions
    real_close = auctions._close_locked
    tries: list[str] = []

    async def close_locked(uow: Any, ctx: Context, lot: Any, *, reason: str) -> Any:
        if lot.id in bad:
            tries.append(lot.id)
            raise ValueError("a value nothing foresaw")
        return await real_close(uow, ctx, lot, reason=reason)

    monkeypatch.setattr(auctions, "_close_locked", close_locked)
    clock.advance(601)
    for _ in range(12):  # two minutes of passes: every set-aside entry expires at least once
        with contextlib.suppress(ValueError):
            await auctions.scheduler_pass(SYSTEM)
        clock.advance(10)
    assert (await market.get(good["id"]))["status"] == "unsold", len(tries)
