"""Review of the group-committed bids (ADR 0013): cases where a batch must answer what one bid
per transaction answered, and where the writer must answer every waiter."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from hammerlock.auctions import bidding
from hammerlock.auctions.bidding import BidRequest
from hammerlock.auctions.errors import BidsBusy
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.parties import service as parties
from tests.auctions.conftest import Market, idem
from tests.auctions.test_bid_batches import _setup


def _post(market: Market, lot_id: str, headers: dict[str, str], amount: int) -> Any:
    return market.client.post(
        f"/v1/lots/{lot_id}/bids", json={"max_amount": amount}, headers=headers
    )


async def test_stopping_the_writer_answers_the_bids_of_the_batch_in_flight(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() cancels the writer mid-batch: the jobs it had taken off the queue are answered
    too (before 50e434a they waited for the 30 s timeout). Deterministic: the batch is held in
    flight, where test_stopping_the_writer_answers_every_waiting_bid may catch it queued."""
    lot, bidders = await _setup(container, 4)
    ctx = Context.system("tests")
    entered = asyncio.Event()
    real = parties.bidders_ready

    async def slow(uow: Any, ids: Any) -> dict[str, str]:
        entered.set()
        await asyncio.sleep(3_600)  # the batch is in flight, holding its transaction
        return await real(uow, ids)

    monkeypatch.setattr(parties, "bidders_ready", slow)
    waiting = [
        asyncio.create_task(
            container.auctions.place_bid(
                ctx, lot.id, bidder_id=b, max_amount=10_000 * (i + 1), idempotency_key=None
            )
        )
        for i, b in enumerate(bidders)
    ]
    await asyncio.wait_for(entered.wait(), 10)
    await container.auctions.bids.stop()
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert all(isinstance(r, BidsBusy) for r in results), results
    monkeypatch.setattr(parties, "bidders_ready", real)
    await container.auctions.bids.start()
    _, bids = await container.auctions.list_bids(ctx, lot.id, after_seq=0, limit=100)
    assert bids == []  # the cancelled batch rolled back


async def test_a_key_reused_after_its_answer_expired_does_not_answer_with_another_bid(
    market: Market, container: Container, clock: FixedClock
) -> None:
    """Once the stored answer has expired the key is "new again" (ADR 0005), but the bid row
    still holds it: another bid under that key used to get a 201 that showed the *old* bid (of
    another lot, or another amount) while nothing was placed. It is a reuse (422) instead."""
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot_a = await market.lot(seller)
    lot_b = await market.lot(seller)
    headers = {**a.headers, **idem()}
    first = await _post(market, lot_a["id"], headers, 2_000)
    assert first.status_code == 201
    clock.advance(container.settings.idempotency_ttl_s + 1)
    await container.idempotency.purge_expired()

    other_lot = await _post(market, lot_b["id"], headers, 7_000)
    assert (other_lot.status_code, other_lot.json()["code"]) == (422, "idempotency_key_reuse")
    assert (await market.get(lot_b["id"]))["bid_count"] == 0

    other_amount = await _post(market, lot_a["id"], headers, 9_000)
    assert other_amount.status_code == 422, other_amount.text
    # the very same request still finds its bid (ADR 0013: the bid row outlives the answer)
    same = await _post(market, lot_a["id"], headers, 2_000)
    assert (same.status_code, same.json()["id"]) == (201, first.json()["id"])


async def test_buy_now_with_a_key_whose_answer_expired_does_not_answer_with_a_bid(
    market: Market, container: Container, clock: FixedClock
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot_a = await market.lot(seller)
    lot_b = await market.lot(seller, reserve_price=5_000, buy_now_price=8_000)
    headers = {**a.headers, **idem()}
    assert (await _post(market, lot_a["id"], headers, 2_000)).status_code == 201
    clock.advance(container.settings.idempotency_ttl_s + 1)
    await container.idempotency.purge_expired()
    bought = await market.client.post(f"/v1/lots/{lot_b['id']}/buy_now", json={}, headers=headers)
    lot = await market.get(lot_b["id"])
    # either it really bought the lot, or it refused the key
    assert bought.status_code == 422 or (bought.status_code == 200 and lot["status"] == "closed")


async def test_stopping_the_writer_leaves_no_bid_counted(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() answers every waiting bid, so none is counted any more: a writer started again
    must not begin with the stopped one's bids still counted against its queue limit (they
    added up over restarts until every bid was refused 503)."""
    lot, bidders = await _setup(container, 3)
    ctx = Context.system("tests")
    entered = asyncio.Event()
    real = parties.bidders_ready

    async def slow(uow: Any, ids: Any) -> dict[str, str]:
        entered.set()
        await asyncio.sleep(3_600)
        return await real(uow, ids)

    monkeypatch.setattr(parties, "bidders_ready", slow)
    writer = container.auctions.bids
    waiting = [
        asyncio.create_task(
            container.auctions.place_bid(
                ctx, lot.id, bidder_id=b, max_amount=10_000 * (i + 1), idempotency_key=None
            )
        )
        for i, b in enumerate(bidders)
    ]
    await asyncio.wait_for(entered.wait(), 10)
    await writer.stop()
    await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    monkeypatch.setattr(parties, "bidders_ready", real)
    await writer.start()
    assert writer._waiting == 0


async def test_the_writer_hands_a_laned_lots_bid_to_its_lane(container: Container) -> None:
    """A bid the writer takes for a lot that has a lane (queued before the lane opened, or
    re-run alone after a failed batch) joins the lane behind the lot's earlier bids; decided by
    the writer, it overtook them in another transaction while they still waited."""
    lot, bidders = await _setup(container, 2)
    ctx = Context.system("tests")
    writer = container.auctions.bids
    earlier = bidding._Job(BidRequest(ctx, lot.id, bidders[0], 5_000))
    lane = bidding._Lane()
    lane.queue.append(earlier)  # waiting for the lot's lock (no task: it never gets it here)
    writer._lanes[lot.id] = lane
    late = bidding._Job(BidRequest(ctx, lot.id, bidders[1], 9_000))
    writer._waiting += 2
    await writer._process([late], skip_locked=True)
    assert not late.future.done()
    assert list(lane.queue) == [earlier, late]
    _, bids = await container.auctions.list_bids(ctx, lot.id, after_seq=0, limit=10)
    assert bids == []
    await writer.stop()  # answers both (the lane never ran)
    for job in (earlier, late):
        assert isinstance(job.future.exception(), BidsBusy)


async def test_no_connection_in_time_answers_503_once_not_bid_by_bid(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool gave no connection within its timeout (30 s): the batch was re-run one bid at
    a time, each waiting as long again — minutes of a stalled writer, then 500s. The database
    is busy: every waiter is answered 503 at once, as when it stays busy through every retry."""
    lot, bidders = await _setup(container, 5)
    ctx = Context.system("tests")
    calls = 0

    async def no_connection(*args: object, **kwargs: object) -> list[object]:
        nonlocal calls
        calls += 1
        raise sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached")

    monkeypatch.setattr(bidding, "run_batch", no_connection)
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
    assert calls <= 2  # a batch or two, not every bid on its own
