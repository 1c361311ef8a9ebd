"""The sequencer: outbox → gap-free seq → audit_log, tiles, signed heads; once across processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib

import httpx
import orjson
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hammerlock.audit import service as audit
from hammerlock.audit.merkle import (
    CompactTree,
    leaf_hash,
    root_from_leaf_hashes,
    verify_tree_head,
)
from hammerlock.audit.model import Context
from hammerlock.audit.sequencer import TILE_SIZE, Sequencer
from hammerlock.audit.storage import audit_log, audit_outbox, audit_tree_heads, audit_tree_tiles
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.ledger import service as ledger
from hammerlock.ledger.model import AccountFlag, AccountInput, TransferInput


async def _emit(container: Container, n: int, prefix: str = "e") -> None:
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        await audit.record_many(
            uow,
            [
                ctx.event(
                    "test.event",
                    resource_type="thing",
                    resource_id=f"{prefix}{i}",
                    ts_us=uow.clock.now_us(),
                    details={"i": i},
                )
                for i in range(n)
            ],
        )


async def _rows(
    container: Container, table: sa.Table, order: sa.ColumnElement[int]
) -> list[sa.RowMapping]:
    async with container.db.transaction(write=False) as uow:
        return list((await uow.conn.execute(sa.select(table).order_by(order))).mappings())


async def test_sequences_gap_free_with_tiles_and_signed_heads(
    container: Container, clock: FixedClock
) -> None:
    await _emit(container, 300)
    assert await container.sequencer.run_once() == 300
    clock.advance(2)
    await _emit(container, 300, prefix="f")
    assert await container.sequencer.run_once() == 300
    assert await container.sequencer.run_once() == 0

    rows = await _rows(container, audit_log, audit_log.c.seq)
    assert [r["seq"] for r in rows] == list(range(600))
    for row in rows:
        event = orjson.loads(row["canonical"])
        assert event["seq"] == row["seq"]
        assert leaf_hash(row["canonical"].encode()).hex() == row["leaf_hash"]
    assert await _rows(container, audit_outbox, audit_outbox.c.id) == []

    hashes = [bytes.fromhex(r["leaf_hash"]) for r in rows]
    tiles = await _rows(container, audit_tree_tiles, audit_tree_tiles.c.idx)
    assert [t["idx"] for t in tiles] == [0, 1]
    for t in tiles:
        lo = t["idx"] * TILE_SIZE
        assert t["hash"] == root_from_leaf_hashes(hashes[lo : lo + TILE_SIZE]).hex()

    heads = await _rows(container, audit_tree_heads, audit_tree_heads.c.size)
    assert [h["size"] for h in heads] == [300, 600]
    public = Ed25519PublicKey.from_public_bytes(container.audit_signer.public_raw)
    for h in heads:
        assert h["root_hash"] == root_from_leaf_hashes(hashes[: h["size"]]).hex()
        assert verify_tree_head(
            public, h["size"], h["root_hash"], h["timestamp"], base64.b64decode(h["signature"])
        )
    archived = (container.settings.data_dir / "audit" / "tree_heads.jsonl").read_text().splitlines()
    assert [orjson.loads(line)["size"] for line in archived] == [300, 600]


async def test_resumes_from_its_frontier_and_runs_once(container: Container) -> None:
    await _emit(container, 10)
    assert await container.sequencer.run_once() == 10
    # A second sequencer (another process) cannot take the live lease ...
    other = Sequencer(container.db, container.audit_signer, node="other")
    await _emit(container, 5)
    assert await other.run_once() == 0
    # ... until the first lets go; then it resumes from the stored frontier.
    await container.sequencer.release()
    assert await other.run_once() == 5
    rows = await _rows(container, audit_log, audit_log.c.seq)
    tree = CompactTree()
    tree.extend(bytes.fromhex(r["leaf_hash"]) for r in rows)
    heads = await _rows(container, audit_tree_heads, audit_tree_heads.c.size)
    assert heads[-1]["size"] == 15
    assert heads[-1]["root_hash"] == tree.root().hex()


async def test_log_and_heads_are_append_only(container: Container) -> None:
    await _emit(container, 3)
    await container.sequencer.run_once()
    for statement in (
        "UPDATE audit_log SET action = 'x' WHERE seq = 0",
        "DELETE FROM audit_log WHERE seq = 2",
        "UPDATE audit_tree_heads SET root_hash = 'x'",
        "DELETE FROM audit_tree_heads",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            async with container.db.transaction() as uow:
                await uow.conn.execute(sa.text(statement))


async def test_the_running_loop_records_start_heartbeat_and_stop(
    container: Container, clock: FixedClock
) -> None:
    sequencer = container.sequencer
    sequencer._lifecycle = True  # what run_forever switches on
    await sequencer.run_once()  # becomes leader: start
    clock.advance(30)
    await sequencer.run_once()  # too early for a heartbeat
    clock.advance(31)
    await sequencer.run_once()  # heartbeat
    await sequencer.release()  # stop (sequenced by whoever leads next)
    await sequencer.run_once()
    rows = await _rows(container, audit_log, audit_log.c.seq)
    assert [r["action"] for r in rows] == [
        "audit.sequencer.start",
        "audit.heartbeat",
        "audit.sequencer.stop",
    ]


async def test_readyz_reports_a_backlog_over_the_high_water_mark(
    container: Container, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/readyz")).json()["status"] == "ok"
    await _emit(container, 3)
    assert not await audit.outbox_over(container.db, 3)
    assert await audit.outbox_over(container.db, 2)
    container.settings = container.settings.model_copy(update={"audit_outbox_high_water": 2})
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "degraded"
    await container.sequencer.run_once()
    assert (await client.get("/readyz")).json()["status"] == "ok"


class _Boom(Exception):
    pass


async def test_an_event_commits_and_rolls_back_with_its_transaction(container: Container) -> None:
    """Recorded as the transaction's first statement (the outbox insert may bypass SQLAlchemy's
    cursor): it still rolls back with the transaction, and a duplicate is SQLAlchemy's error."""
    event = Context.system("tests").event("test.event", resource_type="t", resource_id="1", ts_us=1)

    async def record_then_fail() -> None:
        async with container.db.transaction() as uow:
            await audit.record(uow, event)
            raise _Boom

    with pytest.raises(_Boom):
        await record_then_fail()
    assert await _rows(container, audit_outbox, audit_outbox.c.id) == []
    async with container.db.transaction() as uow:
        await audit.record(uow, event)
    with pytest.raises(sa.exc.IntegrityError):
        async with container.db.transaction() as uow:
            await audit.record_many(uow, [event, event])
    assert [r["event_id"] for r in await _rows(container, audit_outbox, audit_outbox.c.id)] == [
        event.event_id
    ]


@pytest.mark.parametrize("transfers", [1, 3])
async def test_a_ledger_request_records_one_event_with_its_transfers(
    container: Container, transfers: int
) -> None:
    """One transfer: on PostgreSQL the event goes inside the transfer INSERT (a CTE); several:
    its own INSERT. Either way one event, in the transaction, and none when it rolls back."""
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        await ledger.create_accounts(
            uow, None, [AccountInput(f"a{i}", "USD", "t", AccountFlag(0), "{}") for i in (1, 2)]
        )
    before = len(await _rows(container, audit_outbox, audit_outbox.c.id))

    def batch(prefix: str) -> list[TransferInput]:
        return [
            TransferInput(f"{prefix}{i}", "a1", "a2", amount=1, currency="USD", code="t")
            for i in range(transfers)
        ]

    async with container.db.transaction() as uow:
        assert await ledger.post(uow, batch("x"), ctx=ctx) == ["ok"] * transfers

    async def post_then_fail() -> None:
        async with container.db.transaction() as uow:
            await ledger.post(uow, batch("y"), ctx=ctx)
            raise _Boom

    with pytest.raises(_Boom):
        await post_then_fail()
    rows = (await _rows(container, audit_outbox, audit_outbox.c.id))[before:]
    assert [r["action"] for r in rows] == ["ledger.transfers.create"]
    event = orjson.loads(rows[0]["event"])
    assert event["details"]["count"] == transfers
    assert event["resource"]["id"] == "x0"
    assert await container.sequencer.run_once() >= 1


@pytest.mark.parametrize("before", [3, 1500])
async def test_a_row_that_fails_to_render_rolls_the_whole_batch_back(
    container: Container, before: int
) -> None:
    """The outbox rows are taken (DELETE) and appended (COPY, fed by the renderer) in one
    transaction: a failure mid-COPY — after some data went to the server when ``before`` rows
    fill its buffer — loses no event, appends none and moves no position."""
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        await audit.record_many(
            uow,
            [
                ctx.event(
                    "test.event",
                    resource_type="t",
                    resource_id=f"g{i}",
                    ts_us=1,
                    details={"pad": "x" * 512},
                )
                for i in range(before)
            ],
        )
        await uow.conn.execute(
            audit_outbox.insert().values(event_id="bad", ts_us=1, action="x", event="{not json")
        )
    await _emit(container, 2, prefix="after")
    total = before + 3
    with pytest.raises(orjson.JSONDecodeError):
        await container.sequencer.run_once()
    assert len(await _rows(container, audit_outbox, audit_outbox.c.id)) == total
    assert await _rows(container, audit_log, audit_log.c.seq) == []
    async with container.db.transaction() as uow:
        await uow.conn.execute(audit_outbox.delete().where(audit_outbox.c.event_id == "bad"))
    container.sequencer._batch_max = 10_000
    assert await container.sequencer.run_once() == total - 1
    rows = await _rows(container, audit_log, audit_log.c.seq)
    assert [r["seq"] for r in rows] == list(range(total - 1))


async def test_concurrent_sequencers_take_each_event_once(container: Container) -> None:
    """Sequencers contending for the lease every round (it is expired as soon as taken): each
    event is appended once, seqs are gap-free (the lease row's lock orders their batches)."""
    others = [
        # A lease already expired when taken: every round of every one contends for it.
        Sequencer(container.db, container.audit_signer, node=f"n{i}", batch_max=37, lease_s=-1)
        for i in range(3)
    ]
    await _emit(container, 400)

    async def drain(s: Sequencer) -> None:
        for _ in range(40):
            with contextlib.suppress(sa.exc.OperationalError):  # SQLite busy: next round
                await s.run_once()
            await asyncio.sleep(0)

    await asyncio.gather(*(drain(s) for s in others))
    rows = await _rows(container, audit_log, audit_log.c.seq)
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    assert len({r["event_id"] for r in rows}) == len(rows)
    assert len(rows) == 400
    assert await _rows(container, audit_outbox, audit_outbox.c.id) == []


async def test_a_one_transfer_request_whose_transfer_is_refused_records_its_event(
    container: Container,
) -> None:
    """No transfer to insert, so no INSERT to carry the event as a CTE: it is recorded alone."""
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        await ledger.create_accounts(
            uow, None, [AccountInput(f"b{i}", "USD", "t", AccountFlag(0), "{}") for i in (1, 2)]
        )
        before = len(await _rows(container, audit_outbox, audit_outbox.c.id))
    async with container.db.transaction() as uow:
        assert await ledger.post(
            uow, [TransferInput("z1", "b1", "nope", amount=1, currency="USD", code="t")], ctx=ctx
        ) != ["ok"]
    rows = (await _rows(container, audit_outbox, audit_outbox.c.id))[before:]
    assert [r["action"] for r in rows] == ["ledger.transfers.create"]
    assert orjson.loads(rows[0]["event"])["details"]["ok"] == 0
