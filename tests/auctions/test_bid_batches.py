"""Group-committed bids (ADR 0013): answers stored in the bid's own transaction, twins in one
batch, refusals replayed, one bad request isolated, two writers (two "processes") on one lot."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from hammerlock.auctions import bidding
from hammerlock.auctions.bidding import Answer, BidRequest
from hammerlock.auctions.errors import BidsBusy
from hammerlock.auctions.model import Bid, Lot
from hammerlock.auctions.service import NewLot
from hammerlock.audit.model import Actor, Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.receipts import idempotency_keys
from hammerlock.errors import DomainError
from hammerlock.parties import service as parties
from hammerlock.parties.model import PartyKind
from tests.auctions.conftest import Market, idem


def _post(market: Market, lot_id: str, headers: dict[str, str], amount: int) -> Any:
    return market.client.post(
        f"/v1/lots/{lot_id}/bids", json={"max_amount": amount}, headers=headers
    )


async def test_twins_in_one_batch_make_one_bid_and_the_same_answer(market: Market) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot = await market.lot(seller)
    headers = {**a.headers, **idem()}
    answers = await asyncio.gather(*(_post(market, lot["id"], headers, 2_000) for _ in range(6)))
    assert {r.status_code for r in answers} == {201}
    assert len({r.content for r in answers}) == 1  # byte for byte
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 5
    assert (await market.get(lot["id"]))["bid_count"] == 1


async def test_a_key_reused_for_another_bid_is_refused_in_and_across_batches(
    market: Market,
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot = await market.lot(seller)
    headers = {**a.headers, **idem()}
    first, second = await asyncio.gather(
        _post(market, lot["id"], headers, 2_000), _post(market, lot["id"], headers, 3_000)
    )
    assert sorted([first.status_code, second.status_code]) == [201, 422]
    refused = first if first.status_code == 422 else second
    assert refused.json()["code"] == "idempotency_key_reuse"
    later = await _post(market, lot["id"], headers, 9_000)
    assert (later.status_code, later.json()["code"]) == (422, "idempotency_key_reuse")
    assert (await market.get(lot["id"]))["bid_count"] == 1


async def test_a_refusal_is_stored_with_the_bid_and_replayed(market: Market) -> None:
    seller = await market.party("seller")
    a, b = await market.party("bidder", "A"), await market.party("bidder", "B")
    lot = await market.lot(seller)
    assert (await market.bid(lot["id"], a, 5_000)).status_code == 201
    low = {**b.headers, **idem()}
    refused = await _post(market, lot["id"], low, 1_000)
    assert (refused.status_code, refused.json()["code"]) == (422, "bid_too_low")
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201  # the lot moves on
    again = await _post(market, lot["id"], low, 1_000)
    assert again.headers.get("idempotent-replayed") == "true"
    assert (again.status_code, again.content) == (422, refused.content)


async def test_the_answer_commits_with_the_bid(market: Market, container: Container) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot = await market.lot(seller)
    key = str(uuid.uuid4())
    r = await _post(market, lot["id"], {**a.headers, "Idempotency-Key": key}, 2_000)
    assert r.status_code == 201
    t = idempotency_keys
    async with container.db.transaction(write=False) as uow:
        row = (await uow.conn.execute(sa.select(t).where(t.c.key == key))).mappings().one()
    assert (row["state"], row["status_code"], bytes(row["body"])) == ("complete", 201, r.content)
    assert row["lease_token"] is None  # no lease was ever taken


async def test_an_expired_answer_still_finds_the_bid_it_made(
    market: Market, container: Container, clock: FixedClock
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot = await market.lot(seller)
    headers = {**a.headers, **idem()}
    first = await _post(market, lot["id"], headers, 2_000)
    clock.advance(container.settings.idempotency_ttl_s + 1)
    await container.idempotency.purge_expired()
    again = await _post(market, lot["id"], headers, 2_000)
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]  # the same bid, not a second one
    assert (await market.get(lot["id"]))["bid_count"] == 1


async def _setup(container: Container, bidders: int) -> tuple[Lot, list[str]]:
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        seller, _ = await parties.register(
            uow, ctx, kind=PartyKind.SELLER, name="s", email=None, pepper=container.pepper
        )
        ids = []
        for i in range(bidders):
            bidder, _ = await parties.register(
                uow, ctx, kind=PartyKind.BIDDER, name=f"b{i}", email=None, pepper=container.pepper
            )
            await parties.add_card(
                uow, ctx, bidder.id, payment_method=f"tok_{i}", brand=None, last4=None
            )
            ids.append(bidder.id)
    now = container.clock.now_us()
    lot = await container.auctions.create_lot(
        ctx,
        NewLot(
            seller_id=seller.id,
            title="hot lot",
            currency="USD",
            estimate=0,
            starting_price=100,
            reserve_price=10_000,
            starts_at_us=now,
            ends_at_us=now + 3_600_000_000,
        ),
    )
    return await container.auctions.open_lot(ctx, lot.id), ids


async def test_one_bad_request_does_not_fail_its_batch(container: Container) -> None:
    lot, bidders = await _setup(container, 8)
    ctx = Context.system("tests")

    def render(outcome: tuple[Bid, Lot] | DomainError) -> Answer:
        if isinstance(outcome, tuple) and outcome[0].max_amount == 4_444:
            raise RuntimeError("a renderer bug")
        return Answer(201 if isinstance(outcome, tuple) else 422, {}, b"{}")

    requests = [
        BidRequest(ctx, lot.id, b, 1_111 * (i + 1), render=render) for i, b in enumerate(bidders)
    ]
    results = await asyncio.gather(
        *(container.auctions.submit_bid(r) for r in requests), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1
    assert isinstance(failed[0], RuntimeError)
    _, bids = await container.auctions.list_bids(ctx, lot.id, after_seq=0, limit=100)
    assert 4_444 not in {b.max_amount for b in bids}
    assert [b.seq for b in bids] == list(range(1, len(bids) + 1))
    assert len(bids) == sum(isinstance(r, Answer) and r.status_code == 201 for r in results)


async def test_stopping_the_writer_answers_every_waiting_bid(container: Container) -> None:
    lot, bidders = await _setup(container, 10)
    ctx = Context.system("tests")
    waiting = [
        asyncio.create_task(
            container.auctions.place_bid(
                ctx, lot.id, bidder_id=b, max_amount=10_000 * (i + 1), idempotency_key=None
            )
        )
        for i, b in enumerate(bidders)
    ]
    await asyncio.sleep(0)  # queued, and the first batch under way
    await container.auctions.bids.stop()
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)
    assert all(isinstance(r, (tuple, BidsBusy)) for r in results), results
    await container.auctions.bids.start()
    _, bids = await container.auctions.list_bids(ctx, lot.id, after_seq=0, limit=100)
    assert len(bids) == sum(isinstance(r, tuple) for r in results)  # a refusal wrote nothing


async def test_service_twins_in_one_batch_make_one_bid(container: Container) -> None:
    """Callers without a receipt (the service API) still get one bid per (key, Idempotency-Key)."""
    lot, bidders = await _setup(container, 1)
    ctx = replace(
        Context.system("tests"), actor=Actor(principal_id="svc", role="service", key_id="key_t")
    )
    results = await asyncio.gather(
        *(
            container.auctions.place_bid(
                ctx, lot.id, bidder_id=bidders[0], max_amount=5_000, idempotency_key="same"
            )
            for _ in range(5)
        )
    )
    assert len({bid.id for bid, _ in results}) == 1
    _, bids = await container.auctions.list_bids(ctx, lot.id, after_seq=0, limit=100)
    assert len(bids) == 1


async def test_a_database_busy_through_every_retry_answers_503_once_not_bid_by_bid(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    lot, bidders = await _setup(container, 5)
    ctx = Context.system("tests")

    class Serialization(Exception):
        sqlstate = "40001"

    calls = 0

    async def always_busy(*args: object, **kwargs: object) -> list[object]:
        nonlocal calls
        calls += 1
        raise DBAPIError("UPDATE lots …", None, Serialization("could not serialize"))

    monkeypatch.setattr(bidding, "run_batch", always_busy)
    results = await asyncio.gather(
        *(
            container.auctions.place_bid(
                ctx, lot.id, bidder_id=b, max_amount=10_000 * (i + 1), idempotency_key=None
            )
            for i, b in enumerate(bidders)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, BidsBusy) for r in results), results
    assert calls <= 2 * 6  # a batch or two, each retried — not every bid retried on its own
