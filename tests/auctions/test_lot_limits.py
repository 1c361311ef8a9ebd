"""Limits that keep every lot closable: amounts whose order total the API can carry, instants the
calendar can hold, and a scheduler that one bad lot cannot stop (review of issue #6)."""

from __future__ import annotations

from typing import Any

import pytest

from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from hammerlock.escrow.model import compute_fees, largest_hammer
from hammerlock.money import MAX_API_AMOUNT
from tests.auctions.conftest import Market, idem

pytestmark = pytest.mark.usefixtures("gateway")
SYSTEM = Context.system("tests.auctions")


@pytest.mark.parametrize("premium_bps", [0, 1, 2_500, 9_999, 10_000])
def test_largest_hammer_is_the_last_price_whose_total_the_api_carries(premium_bps: int) -> None:
    most = largest_hammer("USD", premium_bps)
    assert compute_fees(most, "USD", premium_bps, 0).total <= MAX_API_AMOUNT
    assert compute_fees(most + 1, "USD", premium_bps, 0).total > MAX_API_AMOUNT


async def test_a_bid_above_the_largest_hammer_is_refused_with_the_limit(market: Market) -> None:
    seller = await market.party("seller")
    bidder = await market.party("bidder", "B")
    lot = await market.lot(seller, buyer_premium_bps=2_500)
    most = largest_hammer("USD", 2_500)
    r = await market.bid(lot["id"], bidder, most + 1)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "bid_too_high"
    assert r.json()["max_amount_allowed"] == most
    assert (await market.get(lot["id"]))["bid_count"] == 0
    assert (await market.bid(lot["id"], bidder, most)).status_code == 201


@pytest.mark.parametrize("name", ["starting_price", "reserve_price", "buy_now_price"])
async def test_lot_prices_above_the_largest_hammer_are_refused(market: Market, name: str) -> None:
    seller = await market.party("seller")
    most = largest_hammer("USD", 1_000)
    terms: dict[str, Any] = {"buyer_premium_bps": 1_000, name: most + 1}
    if name == "buy_now_price":
        terms["starting_price"] = 1_000
    r = await market.client.post(
        "/v1/lots",
        json={
            "title": "Too dear",
            "currency": "USD",
            "estimate": 1_000,
            "starting_price": 1_000,
            "starts_at": format_rfc3339(market.clock.now_us()),
            "ends_at": format_rfc3339(market.clock.now_us() + 3_600_000_000),
            **terms,
        },
        headers=seller.headers,
    )
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_lot"
    assert name in r.json()["detail"]


@pytest.mark.parametrize(
    ("starts_at", "ends_at"),
    [
        ("1999-12-31T23:59:59Z", "2000-01-01T12:00:00Z"),
        ("0001-01-01T00:00:00+14:00", "0001-01-02T00:00:00+14:00"),
        ("2031-06-01T00:00:00Z", "2031-06-02T00:00:00Z"),
        ("9999-12-31T00:00:00Z", "9999-12-31T23:00:00Z"),
    ],
)
async def test_lot_instants_outside_the_window_are_refused(
    market: Market, starts_at: str, ends_at: str
) -> None:
    """The fixed clock stands at 2026-01-01: a lot starts from 2000 on, at most 5 years ahead."""
    seller = await market.party("seller")
    r = await market.client.post(
        "/v1/lots",
        json={
            "title": "Out of time",
            "currency": "USD",
            "estimate": 1_000,
            "starting_price": 1_000,
            "starts_at": starts_at,
            "ends_at": ends_at,
        },
        headers=seller.headers,
    )
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_lot"
    assert "starts_at" in r.json()["detail"]


@pytest.mark.parametrize(
    "terms", [{"payment_window_s": 0}, {"inspection_period_s": -1}, {"payment_window_s": -5}]
)
async def test_order_windows_an_order_cannot_take_are_refused(
    market: Market, terms: dict[str, int]
) -> None:
    """A payment window of 0 passed the schema, then every close of the lot failed (the order's
    terms refuse it)."""
    seller = await market.party("seller")
    r = await market.client.post(
        "/v1/lots",
        json={
            "title": "No window",
            "currency": "USD",
            "estimate": 1_000,
            "starting_price": 1_000,
            "starts_at": format_rfc3339(market.clock.now_us()),
            "ends_at": format_rfc3339(market.clock.now_us() + 3_600_000_000),
            **terms,
        },
        headers=seller.headers,
    )
    assert r.status_code == 422, r.text
    # 0 passes the schema (seconds ≥ 0) and is the service's to refuse; negatives, the schema's
    assert r.json()["code"] == (
        "invalid_lot" if terms.get("payment_window_s") == 0 else "validation_error"
    )


async def test_a_lot_that_fails_to_close_does_not_stop_the_lots_due_after_it(
    market: Market, container: Container, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    first = await market.lot(seller, ends_at=format_rfc3339(clock.now_us() + 60_000_000))
    second = await market.lot(seller, ends_at=format_rfc3339(clock.now_us() + 120_000_000))
    for lot in (first, second):
        assert (await market.bid(lot["id"], a, 5_000)).status_code == 201
    opener = container.auctions.open_order

    async def failing(uow: Any, ctx: Context, terms: Any) -> str:
        if terms.lot_id == first["id"]:
            raise RuntimeError("an order nobody foresaw")
        return await opener(uow, ctx, terms)

    monkeypatch.setattr(container.auctions, "open_order", failing)
    clock.advance(3_600)
    counts = await container.auctions.scheduler_pass(SYSTEM)
    assert counts["closed"] == 1
    assert (await market.get(second["id"]))["status"] == "closed"
    assert (await market.get(first["id"]))["status"] == "open"  # rolled back, tried again later
    monkeypatch.setattr(container.auctions, "open_order", opener)
    await container.auctions.scheduler_pass(SYSTEM)
    assert (await market.get(first["id"]))["status"] == "open"  # set aside for a minute
    clock.advance(61)
    await container.auctions.scheduler_pass(SYSTEM)
    assert (await market.get(first["id"]))["status"] == "closed"


async def test_a_close_through_the_api_still_answers_a_failure(
    market: Market, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Isolation is the scheduler's: an operator's close of a lot that cannot close is a 500
    with nothing written, not a silent success."""
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(seller)
    assert (await market.bid(lot["id"], a, 5_000)).status_code == 201

    async def failing(uow: Any, ctx: Context, terms: Any) -> str:
        raise RuntimeError("an order nobody foresaw")

    monkeypatch.setattr(container.auctions, "open_order", failing)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/close", headers={**await market.staff(), **idem()}
    )
    assert r.status_code == 500
    assert (await market.get(lot["id"]))["status"] == "open"
