"""50 bidders x 20 bids racing on one lot over real PostgreSQL connections.

The lot's row lock serializes them: the accepted bids carry the sequence 1..N without a gap or a
repeat, every refusal is ``bid_too_low``, and the lot's final price, leader and runner-up equal a
from-scratch replay of the accepted bids in sequence order.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from hammerlock.api.app import create_app
from hammerlock.auctions import storage
from hammerlock.auctions.errors import BidTooLow
from hammerlock.auctions.model import AcceptedBid, standing_of
from hammerlock.auctions.service import NewLot
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.parties import service as parties
from hammerlock.parties.model import PartyKind
from hammerlock.security import service as keys_service
from hammerlock.security.permissions import Role
from hammerlock.settings import Settings
from tests.auctions.test_bid_batches import _setup
from tests.auctions.test_model import reference
from tests.conftest import require_service

BIDDERS = 50
BIDS_EACH = 20


@pytest.fixture
def backend() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql"


@pytest.fixture
def app_settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        api_key_pepper="test-pepper-not-secret",
        db_pool_size=20,
    )


async def test_concurrent_bids_are_serialized_and_priced_as_a_replay(
    container: Container,
) -> None:
    ctx = Context.system("tests")
    pepper = container.pepper
    async with container.db.transaction() as uow:
        seller, _ = await parties.register(
            uow, ctx, kind=PartyKind.SELLER, name="s", email=None, pepper=pepper
        )
        bidders = []
        for i in range(BIDDERS):
            bidder, _ = await parties.register(
                uow, ctx, kind=PartyKind.BIDDER, name=f"b{i}", email=None, pepper=pepper
            )
            await parties.add_card(
                uow, ctx, bidder.id, payment_method=f"tok_{i}", brand=None, last4=None
            )
            bidders.append(bidder.id)
    now = container.clock.now_us()
    auctions = container.auctions
    lot = await auctions.create_lot(
        ctx,
        NewLot(
            seller_id=seller.id,
            title="hot lot",
            currency="USD",
            estimate=0,
            starting_price=100,
            reserve_price=50_000,
            starts_at_us=now,
            ends_at_us=now + 3_600_000_000,
        ),
    )
    await auctions.open_lot(ctx, lot.id)
    rng = random.Random(6)

    async def bidder_run(bidder_id: str) -> tuple[int, int]:
        accepted = refused = 0
        for amount in sorted(rng.randint(100, 200_000) for _ in range(BIDS_EACH)):
            try:
                await auctions.place_bid(
                    ctx, lot.id, bidder_id=bidder_id, max_amount=amount, idempotency_key=None
                )
                accepted += 1
            except BidTooLow:
                refused += 1
        return accepted, refused

    results = await asyncio.gather(*(bidder_run(b) for b in bidders))
    assert sum(a + r for a, r in results) == BIDDERS * BIDS_EACH
    final, bids = await auctions.list_bids(ctx, lot.id, after_seq=0, limit=BIDDERS * BIDS_EACH)
    accepted = sum(a for a, _ in results)
    assert [b.seq for b in bids] == list(range(1, accepted + 1))
    assert final.standing.last_seq == final.standing.bid_count == accepted
    replay = standing_of(final.terms, (AcceptedBid(b.seq, b.bidder_id, b.max_amount) for b in bids))
    assert replay == final.standing
    expected = reference(final.terms, [(b.bidder_id, b.max_amount) for b in bids])
    assert (final.standing.price, final.standing.leader_id, final.standing.runner_up_id) == (
        expected.price,
        expected.leader,
        expected.runner_up,
    )
    # Each accepted bid's recorded price is the replay's price after it.
    for i, bid in enumerate(bids, start=1):
        prefix = standing_of(
            final.terms, (AcceptedBid(b.seq, b.bidder_id, b.max_amount) for b in bids[:i])
        )
        assert (bid.price_after, bid.leader_after) == (prefix.price, prefix.leader_id)


async def test_two_writers_on_one_lot_keep_a_strict_sequence(
    container: Container, app_settings: Any, clock: FixedClock
) -> None:
    """Two containers = two processes' pools and writers, racing on one PostgreSQL lot row."""
    lot, bidders = await _setup(container, 20)
    other = Container(app_settings, clock=clock, background=False)
    await other.start()
    try:
        ctx = Context.system("tests")
        rng = random.Random(13)

        async def run(node: Container, bidder_id: str) -> int:
            accepted = 0
            for amount in sorted(rng.randint(100, 500_000) for _ in range(15)):
                try:
                    await node.auctions.place_bid(
                        ctx, lot.id, bidder_id=bidder_id, max_amount=amount, idempotency_key=None
                    )
                    accepted += 1
                except BidTooLow:
                    pass
            return accepted

        counts = await asyncio.gather(
            *(run(container if i % 2 else other, b) for i, b in enumerate(bidders))
        )
    finally:
        await other.stop()
    final, bids = await container.auctions.list_bids(ctx, lot.id, after_seq=0, limit=1_000)
    assert [b.seq for b in bids] == list(range(1, sum(counts) + 1))
    replay = standing_of(final.terms, (AcceptedBid(b.seq, b.bidder_id, b.max_amount) for b in bids))
    assert replay == final.standing
    expected = reference(final.terms, [(b.bidder_id, b.max_amount) for b in bids])
    assert (final.standing.price, final.standing.leader_id) == (expected.price, expected.leader)
    assert container.auctions.bids.batches < container.auctions.bids.requests  # coalesced


async def test_one_key_sent_to_two_processes_makes_one_bid(
    container: Container, app_settings: Any, clock: FixedClock
) -> None:
    """The same Idempotency-Key raced through two nodes: they meet on idempotency_keys' primary
    key; the loser's batch retries and replays the winner's answer, byte for byte."""
    lot, bidders = await _setup(container, 4)
    other = Container(app_settings, clock=clock, background=False)
    await other.start()
    try:
        async with container.db.transaction() as uow:
            created = await keys_service.create_key(
                uow, Context.system("tests"), pepper=container.pepper, role=Role.SERVICE, name="s"
            )
        headers = {"Authorization": f"Bearer {created.plaintext}"}
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(node)), base_url="http://t"
            )
            for node in (container, other)
        ]
        for round_ in range(10):
            key = {"Idempotency-Key": f"race-{round_}"}
            body = {"bidder_id": bidders[round_ % 4], "max_amount": 100_000 * (round_ + 1)}
            answers = await asyncio.gather(
                *(
                    c.post(f"/v1/lots/{lot.id}/bids", json=body, headers={**headers, **key})
                    for c in clients
                    for _ in range(2)
                )
            )
            assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
            assert len({r.content for r in answers}) == 1
        for c in clients:
            await c.aclose()
    finally:
        await other.stop()
    _, bids = await container.auctions.list_bids(
        Context.system("tests"), lot.id, after_seq=0, limit=100
    )
    assert [b.seq for b in bids] == list(range(1, 11))


async def test_bids_on_lots_held_now_and_then_by_others_are_all_decided_in_sequence(
    container: Container,
) -> None:
    """Lots locked at random by other transactions (closes, settlements elsewhere) while bids
    race on them: held lots' bids go to their own lanes and every bid is still decided, with a
    strict sequence per lot and prices equal to a replay."""
    lots_and_bidders = [await _setup(container, 6) for _ in range(4)]
    ctx = Context.system("tests")
    rng = random.Random(21)
    stop = asyncio.Event()

    async def hold_lots_now_and_then() -> None:
        while not stop.is_set():
            lot_id = rng.choice(lots_and_bidders)[0].id
            async with container.db.engine.connect() as other:
                await other.begin()
                await other.execute(
                    sa.text("SELECT id FROM lots WHERE id = :id FOR UPDATE"), {"id": lot_id}
                )
                await asyncio.sleep(rng.uniform(0.005, 0.05))
                await other.rollback()

    async def bidder_run(lot_id: str, bidder_id: str) -> int:
        accepted = 0
        for amount in sorted(rng.randint(100, 900_000) for _ in range(8)):
            try:
                await container.auctions.place_bid(
                    ctx, lot_id, bidder_id=bidder_id, max_amount=amount, idempotency_key=None
                )
                accepted += 1
            except BidTooLow:
                pass
        return accepted

    holder = asyncio.create_task(hold_lots_now_and_then())
    try:
        counts = await asyncio.gather(
            *(bidder_run(lot.id, b) for lot, bidders in lots_and_bidders for b in bidders)
        )
    finally:
        stop.set()
        await holder
    assert container.auctions.bids.lanes_opened > 0  # some bids did find their lot held
    per_lot = [sum(counts[i * 6 : (i + 1) * 6]) for i in range(4)]
    for (lot, _), accepted in zip(lots_and_bidders, per_lot, strict=True):
        final, bids = await container.auctions.list_bids(ctx, lot.id, after_seq=0, limit=1_000)
        assert [b.seq for b in bids] == list(range(1, accepted + 1))
        expected = reference(final.terms, [(b.bidder_id, b.max_amount) for b in bids])
        assert (final.standing.price, final.standing.leader_id) == (
            expected.price,
            expected.leader,
        )


async def test_a_batch_saves_many_lots_in_one_statement_and_checks_versions(
    container: Container,
) -> None:
    lots = [(await _setup(container, 1))[0] for _ in range(3)]
    async with container.db.transaction() as uow:
        locked, _ = await storage.lock_lots(uow, [lot.id for lot in lots])
        changed = [
            (replace(locked[lot.id], extensions=7, version=locked[lot.id].version + 2), lot.version)
            for lot in lots
        ]
        assert await storage.save_standings(uow, changed)
    async with container.db.transaction() as uow:
        again, _ = await storage.lock_lots(uow, [lot.id for lot in lots])
        assert {(x.extensions, x.version) for x in again.values()} == {(7, lots[0].version + 2)}
        stale = [(replace(again[lot.id], extensions=9), lot.version) for lot in lots]
        assert not await storage.save_standings(uow, stale)  # versions moved on: refused
