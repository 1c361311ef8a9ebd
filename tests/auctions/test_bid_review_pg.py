"""Group-committed bids over real PostgreSQL row locks (review of ADR 0013)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
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
