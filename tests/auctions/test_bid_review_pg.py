"""Group-committed bids over real PostgreSQL row locks (review of ADR 0013)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from hammerlock.auctions import bidding
from hammerlock.auctions.bidding import BidRequest
from hammerlock.auctions.model import LotStatus
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.parties.errors import PartyNotFound
from hammerlock.settings import Settings
from tests.auctions.test_bid_batches import _setup
from tests.conftest import require_service


@pytest.fixture
def backend() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql"


@pytest.fixture
def app_settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        api_key_pepper="test-pepper-not-secret",  # type: ignore[arg-type]
        db_pool_size=10,
    )


async def test_a_lot_locked_elsewhere_does_not_stall_bids_on_other_lots(
    container: Container,
) -> None:
    busy, busy_bidders = await _setup(container, 1)
    calm, calm_bidders = await _setup(container, 1)
    ctx = Context.system("tests")
    auctions = container.auctions
    # Another transaction holds the busy lot's row: a close opening its order, an escrow
    # release settling it, or a process that hung (or lost its network) while holding it.
    async with container.db.engine.connect() as other:
        await other.begin()
        await other.execute(
            sa.text("SELECT id FROM lots WHERE id = :id FOR UPDATE"), {"id": busy.id}
        )
        stuck = asyncio.create_task(
            auctions.place_bid(
                ctx, busy.id, bidder_id=busy_bidders[0], max_amount=5_000, idempotency_key=None
            )
        )
        await asyncio.sleep(0.3)  # its batch now waits on the row lock
        try:
            bid, _ = await asyncio.wait_for(
                auctions.place_bid(
                    ctx, calm.id, bidder_id=calm_bidders[0], max_amount=5_000, idempotency_key=None
                ),
                3,
            )
        finally:
            await other.rollback()
            await stuck
    assert bid.lot_id == calm.id


async def test_many_lots_locked_elsewhere_do_not_take_every_connection(
    container: Container,
) -> None:
    """Each lane holds a connection while it waits for its lot's lock. With more lots held
    elsewhere (another process's batch of many lots that hung) than the pool has connections,
    lanes took them all: the writer then waited for a connection (30 s, then a 500) and every
    bid of the process stalled behind lots it was not bidding on."""
    pool = 10 * 2  # db_pool_size 10, as many again in overflow
    held = [await _setup(container, 1) for _ in range(pool)]
    calm, calm_bidders = await _setup(container, 1)
    ctx = Context.system("tests")
    auctions = container.auctions
    async with container.db.engine.connect() as other:
        await other.begin()
        await other.execute(
            sa.text("SELECT id FROM lots WHERE id = ANY(:ids) FOR UPDATE"),
            {"ids": [lot.id for lot, _ in held]},
        )
        stuck = [
            asyncio.create_task(
                auctions.place_bid(
                    ctx, lot.id, bidder_id=bidders[0], max_amount=5_000, idempotency_key=None
                )
            )
            for lot, bidders in held
        ]
        await asyncio.sleep(0.5)  # their lanes now wait on the row locks
        try:
            bid, _ = await asyncio.wait_for(
                auctions.place_bid(
                    ctx, calm.id, bidder_id=calm_bidders[0], max_amount=5_000, idempotency_key=None
                ),
                3,
            )
        finally:
            await other.rollback()
            results = await asyncio.wait_for(asyncio.gather(*stuck, return_exceptions=True), 30)
    assert bid.lot_id == calm.id
    assert all(isinstance(r, tuple) for r in results), results


async def test_one_batch_starts_a_due_lot_and_bids_on_another_without_leaders(
    container: Container,
) -> None:
    """One UPDATE … FROM unnest for two lots whose leader and runner-up are NULL (a lot started
    by the batch whose only bid was refused; a lot with its first bid)."""
    due, _ = await _setup(container, 1)
    calm, bidders = await _setup(container, 1)
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        await uow.conn.execute(
            sa.text("UPDATE lots SET status = 'scheduled' WHERE id = :id"), {"id": due.id}
        )
    async with container.db.transaction() as uow:
        outcomes = await bidding.run_batch(
            uow,
            [
                BidRequest(ctx, due.id, "no-such-bidder", 5_000),
                BidRequest(ctx, calm.id, bidders[0], 5_000),
            ],
            skip_locked=True,
        )
    assert isinstance(outcomes[0], PartyNotFound)
    assert isinstance(outcomes[1], tuple)
    started, _ = await container.auctions.list_bids(ctx, due.id, after_seq=0, limit=10)
    assert (started.status, started.standing.leader_id, started.standing.bid_count) == (
        LotStatus.OPEN,
        None,
        0,
    )
    bid_on, _ = await container.auctions.list_bids(ctx, calm.id, after_seq=0, limit=10)
    assert (bid_on.standing.leader_id, bid_on.standing.runner_up_id) == (bidders[0], None)
