"""``hammerlock audit verify`` against every way an insider with database access could tamper.

The log is made by the real sequencer (heads at 1, 255, 256, 556, 656, 1056: on both sides of
tile boundaries). The append-only triggers refuse UPDATE and DELETE, so each case does what an
insider would: drop the triggers first (SQLite ``DROP TRIGGER``; PostgreSQL ``ALTER TABLE …
DISABLE TRIGGER ALL``), then edit. Both backends; the Python function throughout, and the CLI
as a subprocess for the exit codes and the words.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import rfc8785
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hammerlock.audit import service as audit
from hammerlock.audit.merkle import CompactTree, leaf_hash, root_from_leaf_hashes, sign_tree_head
from hammerlock.audit.model import Context
from hammerlock.audit.signing import key_id_for
from hammerlock.audit.storage import (
    TILE_SIZE,
    audit_log,
    audit_outbox,
    audit_signing_keys,
    audit_state,
    audit_tree_heads,
    audit_tree_tiles,
)
from hammerlock.audit.verify import Report, TrustAnchor, Workers, verify
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.uow import UnitOfWork
from tests.servers import hammerlock_env, run_cli

BATCHES = (1, 254, 1, 300, 100, 400)
N = sum(BATCHES)
HEADS = [1, 255, 256, 556, 656, 1056]
APPEND_ONLY = ("audit_log", "audit_tree_heads", "audit_tree_tiles", "audit_signing_keys")

Tamper = Callable[[UnitOfWork], Awaitable[None]]


@pytest.fixture
async def log(container: Container, clock: FixedClock) -> Container:
    ctx = Context.system("tests")
    done = 0
    for n in BATCHES:
        async with container.db.transaction() as uow:
            await audit.record_many(
                uow,
                [
                    ctx.event(
                        "test.event",
                        resource_type="thing",
                        resource_id=f"t{done + i}",
                        ts_us=uow.clock.now_us(),
                        details={"i": done + i, "text": "\u00e9\U0001f600" if i % 9 == 0 else "a"},
                    )
                    for i in range(n)
                ],
            )
        done += n
        assert await container.sequencer.run_once() == n
        clock.advance(2)
    return container


def anchor_of(container: Container) -> TrustAnchor:
    public = Ed25519PublicKey.from_public_bytes(container.audit_signer.public_raw)
    return TrustAnchor.out_of_band([public], "the test's signing key")


async def tamper(container: Container, change: Tamper) -> None:
    """As an insider: switch the append-only triggers off, then change the store."""
    async with container.db.transaction() as uow:
        for table in APPEND_ONLY:
            if uow.is_postgres:
                await uow.conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER ALL")
            else:
                for verb in ("update", "delete"):
                    await uow.conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
        await change(uow)


async def row(uow: UnitOfWork, seq: int) -> dict[str, object]:
    found = await uow.conn.execute(sa.select(audit_log).where(audit_log.c.seq == seq))
    return dict(found.mappings().one())


def edited(canonical: str, **changes: object) -> str:
    """The canonical text of the event with fields changed, still valid RFC 8785."""
    event = orjson.loads(canonical)
    event.update(changes)
    return rfc8785.dumps(event).decode()


async def set_row(uow: UnitOfWork, seq: int, **values: object) -> None:
    await uow.conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(**values))


async def leaves(uow: UnitOfWork) -> list[bytes]:
    rows = await uow.conn.execute(sa.select(audit_log.c.leaf_hash).order_by(audit_log.c.seq))
    return [bytes.fromhex(h) for (h,) in rows]


async def rebuild_derived(uow: UnitOfWork, key: Ed25519PrivateKey | None) -> None:
    """What a thorough insider does after editing events: recompute tiles, the sequencer's
    frontier and (given a key) re-sign every head over the edited log."""
    hashes = await leaves(uow)
    await uow.conn.execute(audit_tree_tiles.delete())
    await uow.conn.execute(
        audit_tree_tiles.insert(),
        [
            {
                "level": 8,
                "idx": i,
                "hash": root_from_leaf_hashes(hashes[i * 256 : i * 256 + 256]).hex(),
            }
            for i in range(len(hashes) // TILE_SIZE)
        ],
    )
    tree = CompactTree()
    tree.extend(hashes)
    frontier = orjson.dumps([h.hex() for h in tree.to_state()]).decode()
    await uow.conn.execute(audit_state.update().values(position=len(hashes), frontier=frontier))
    if key is None:
        return
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = key_id_for(raw)
    await uow.conn.execute(
        audit_signing_keys.insert().values(
            key_id=key_id,
            algorithm="ed25519",
            public_key=base64.b64encode(raw).decode(),
            created_us=0,
        )
    )
    heads = (await uow.conn.execute(sa.select(audit_tree_heads))).mappings().all()
    await uow.conn.execute(audit_tree_heads.delete())
    for head in heads:
        root = root_from_leaf_hashes(hashes[: head["size"]]).hex()
        signature = sign_tree_head(key, head["size"], root, head["timestamp"])
        await uow.conn.execute(
            audit_tree_heads.insert().values(
                {**head, "root_hash": root, "key_id": key_id,
                 "signature": base64.b64encode(signature).decode()}
            )
        )  # fmt: skip


def first(report: Report) -> str:
    assert not report.ok, "verify passed a tampered log"
    return str(report.first_problem)


# --- the untampered log ------------------------------------------------------------------------


async def test_an_intact_log_passes(log: Container) -> None:
    for anchor in (None, anchor_of(log)):
        report = await verify(log.db, anchor=anchor, page_rows=100, chunk_rows=300)
        assert report.ok, [str(p) for p in report.problems]
        assert (report.events, report.heads, report.tiles) == (N, len(HEADS), N // TILE_SIZE)
        assert report.unsigned_tail == 0
    assert "out of band" in anchor_of(log).source
    assert "audit_signing_keys" in (await verify(log.db)).anchor


async def test_an_empty_log_passes(container: Container) -> None:
    report = await verify(container.db)
    assert report.ok
    assert (report.events, report.heads, report.tiles) == (0, 0, 0)


async def test_events_not_yet_signed_are_counted_not_failed(
    log: Container, clock: FixedClock
) -> None:
    """The sequencer signs a head at most every second while events arrive; the newest
    events may wait for one. That is reported, and is not tampering."""
    log.sequencer._head_interval_us = 10**12  # no head is due
    log.sequencer._batch_max = 3  # and a full batch does not force one
    ctx = Context.system("tests")
    async with log.db.transaction() as uow:
        await audit.record_many(
            uow,
            [
                ctx.event("late", resource_type="x", resource_id=None, ts_us=clock.now_us())
                for _ in range(3)
            ],
        )
    assert await log.sequencer.run_once() == 3
    report = await verify(log.db, anchor=anchor_of(log))
    assert report.ok, [str(p) for p in report.problems]
    assert (report.events, report.heads, report.unsigned_tail) == (N + 3, len(HEADS), 3)


# --- tampering -----------------------------------------------------------------------------------


async def test_a_changed_field_is_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        target = await row(uow, 300)
        await set_row(uow, 300, canonical=edited(str(target["canonical"]), request_id="req_x"))

    await tamper(log, change)
    assert first(await verify(log.db)) == "seq 300: leaf_hash is not SHA-256(0x00 ‖ canonical)"


async def test_a_changed_field_with_its_hash_recomputed_is_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        target = await row(uow, 300)
        text = edited(str(target["canonical"]), request_id="req_x")
        await set_row(uow, 300, canonical=text, leaf_hash=leaf_hash(text.encode()).hex())

    await tamper(log, change)
    report = await verify(log.db, anchor=anchor_of(log))
    assert first(report) == "tile 1 (seqs 256..511) differs from those leaves"
    assert "tree head of size 556: root_hash differs from the root of the tree rebuilt" in str(
        report.problems[1]
    )


async def test_a_changed_field_with_tiles_and_frontier_recomputed_is_caught_by_the_heads(
    log: Container,
) -> None:
    async def change(uow: UnitOfWork) -> None:
        target = await row(uow, 300)
        text = edited(str(target["canonical"]), request_id="req_x")
        await set_row(uow, 300, canonical=text, leaf_hash=leaf_hash(text.encode()).hex())
        await rebuild_derived(uow, key=None)

    await tamper(log, change)
    report = await verify(log.db, anchor=anchor_of(log))
    assert first(report) == (
        "tree head of size 556: root_hash differs from the root of the tree rebuilt from the log"
    )
    assert {p.head_size for p in report.problems} == {556, 656, 1056}


async def test_an_index_column_changed_alone_is_caught(log: Container) -> None:
    """The filters of GET /v1/audit/events use the index columns: hiding an event from a
    filter by editing its column (not the hashed text) shows too."""

    async def change(uow: UnitOfWork) -> None:
        await set_row(uow, 77, actor_id="someone_else")

    await tamper(log, change)
    assert first(await verify(log.db)) == (
        "seq 77: column actor_id ('someone_else') disagrees with the event ('tests')"
    )


async def test_a_deleted_row_is_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        await uow.conn.execute(audit_log.delete().where(audit_log.c.seq == 400))

    await tamper(log, change)
    assert first(await verify(log.db, page_rows=64, chunk_rows=256)) == (
        "seq 400: missing (no row for seq 400)"
    )


async def test_rows_deleted_at_a_chunk_end_are_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        await uow.conn.execute(
            audit_log.delete().where(audit_log.c.seq >= 254, audit_log.c.seq < 256)
        )

    await tamper(log, change)
    assert (
        first(await verify(log.db, chunk_rows=256)) == "seq 254: missing (no row for seq 254..255)"
    )


async def test_two_swapped_rows_are_caught(log: Container) -> None:
    columns = ("event_id", "ts_us", "action", "actor_id", "resource_type", "resource_id",
               "canonical", "leaf_hash")  # fmt: skip

    async def change(uow: UnitOfWork) -> None:
        a, b = await row(uow, 10), await row(uow, 20)
        await set_row(uow, 10, event_id="evt_swap")  # event_id is unique
        await set_row(uow, 20, **{c: a[c] for c in columns})
        await set_row(uow, 10, **{c: b[c] for c in columns})

    await tamper(log, change)
    assert first(await verify(log.db)) == "seq 10: the event inside says seq 20"


async def test_a_truncated_tail_is_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        await uow.conn.execute(audit_log.delete().where(audit_log.c.seq >= 1000))

    await tamper(log, change)
    report = await verify(log.db)
    assert first(report) == (
        "seq 1000: missing: a tree head signs 1056 events but the log ends here"
    )


async def test_a_tail_truncated_back_to_a_head_is_caught(log: Container) -> None:
    """Cut back to exactly the head of 656 and delete the heads after it: the log looks like
    an older one, but the sequencer's position remembers."""

    async def change(uow: UnitOfWork) -> None:
        await uow.conn.execute(audit_log.delete().where(audit_log.c.seq >= 656))
        await uow.conn.execute(audit_tree_heads.delete().where(audit_tree_heads.c.size > 656))
        await uow.conn.execute(audit_tree_tiles.delete().where(audit_tree_tiles.c.idx >= 2))

    await tamper(log, change)
    assert first(await verify(log.db)) == "seq 656: missing: the sequencer's position is 1056"


async def test_an_inserted_row_is_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        template = await row(uow, N - 1)
        text = edited(str(template["canonical"]), seq=N, event_id="evt_inserted")
        await uow.conn.execute(
            audit_log.insert().values(
                {**template, "seq": N, "event_id": "evt_inserted", "canonical": text,
                 "leaf_hash": leaf_hash(text.encode()).hex()}
            )
        )  # fmt: skip

    await tamper(log, change)
    assert first(await verify(log.db)) == (
        f"seq {N}: beyond the sequencer's position {N}: a row nobody sequenced"
    )


async def test_a_row_inserted_before_seq_0_is_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        template = await row(uow, 0)
        if uow.is_postgres:  # the CHECK (seq >= 0) goes too
            await uow.conn.exec_driver_sql(
                "ALTER TABLE audit_log DROP CONSTRAINT IF EXISTS seq_non_negative"
            )
            await uow.conn.exec_driver_sql(
                "ALTER TABLE audit_log DROP CONSTRAINT IF EXISTS ck_audit_log_seq_non_negative"
            )
        else:
            await uow.conn.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        text = edited(str(template["canonical"]), seq=-1, event_id="evt_early")
        await uow.conn.execute(
            audit_log.insert().values(
                {**template, "seq": -1, "event_id": "evt_early", "canonical": text,
                 "leaf_hash": leaf_hash(text.encode()).hex()}
            )
        )  # fmt: skip

    await tamper(log, change)
    assert first(await verify(log.db)) == "seq -1: out of sequence (expected seq 0)"


async def test_a_head_signed_with_another_key_is_caught(log: Container) -> None:
    forger = Ed25519PrivateKey.generate()

    async def change(uow: UnitOfWork) -> None:
        head = (
            (
                await uow.conn.execute(
                    sa.select(audit_tree_heads).where(audit_tree_heads.c.size == 556)
                )
            )
            .mappings()
            .one()
        )
        signature = sign_tree_head(forger, 556, head["root_hash"], head["timestamp"])
        await uow.conn.execute(
            audit_tree_heads.update()
            .where(audit_tree_heads.c.size == 556)
            .values(signature=base64.b64encode(signature).decode())
        )

    await tamper(log, change)
    for anchor in (None, anchor_of(log)):
        report = await verify(log.db, anchor=anchor)
        assert first(report).startswith("tree head of size 556: signature does not verify")


async def test_a_whole_forged_history_needs_the_out_of_band_key(log: Container) -> None:
    """The thorough insider: edits an event, recomputes its hash, the tiles and the frontier,
    re-signs every head with a key of their own and registers that key beside the data.
    Against the database's keys it all checks out — which is exactly why auditors pass
    --public-key with the key they hold out of band; against that, it fails."""
    forger = Ed25519PrivateKey.generate()

    async def change(uow: UnitOfWork) -> None:
        target = await row(uow, 300)
        text = edited(str(target["canonical"]), request_id="req_x")
        await set_row(uow, 300, canonical=text, leaf_hash=leaf_hash(text.encode()).hex())
        await rebuild_derived(uow, key=forger)

    await tamper(log, change)
    assert (await verify(log.db)).ok  # the database vouches for itself
    report = await verify(log.db, anchor=anchor_of(log))
    assert first(report).startswith("tree head of size 1: signed by key ")
    assert "which is not in the trust anchor" in first(report)


async def test_a_replaced_root_is_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        await uow.conn.execute(
            audit_tree_heads.update()
            .where(audit_tree_heads.c.size == 256)
            .values(root_hash="ab" * 32)
        )

    await tamper(log, change)
    report = await verify(log.db)
    assert first(report) == (
        "tree head of size 256: root_hash differs from the root of the tree rebuilt from the log"
    )
    assert str(report.problems[1]).startswith("tree head of size 256: signature does not verify")


async def test_a_changed_tile_is_caught(log: Container) -> None:
    async def change(uow: UnitOfWork) -> None:
        await uow.conn.execute(
            audit_tree_tiles.update().where(audit_tree_tiles.c.idx == 2).values(hash="00" * 32)
        )

    await tamper(log, change)
    assert first(await verify(log.db)) == "tile 2 (seqs 512..767) differs from those leaves"


async def test_worker_processes_find_the_same(log: Container) -> None:
    workers = Workers(log.settings, jobs=2)
    report = await verify(log.db, anchor=anchor_of(log), workers=workers, chunk_rows=300)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.events, report.heads, report.tiles) == (N, len(HEADS), N // TILE_SIZE)

    async def change(uow: UnitOfWork) -> None:
        await uow.conn.execute(audit_log.delete().where(audit_log.c.seq == 700))

    await tamper(log, change)
    report = await verify(log.db, workers=workers, chunk_rows=300)
    assert first(report) == "seq 700: missing (no row for seq 700)"


# --- the command ---------------------------------------------------------------------------------


def _env(container: Container) -> dict[str, str]:
    return hammerlock_env(
        container.settings.data_dir,
        database_url=container.settings.effective_database_url,
        pepper="test-pepper-not-secret",
    )


async def test_the_command(log: Container, tmp_path: Path) -> None:
    env = _env(log)
    pem = tmp_path / "audit.pem"
    pem.write_bytes(log.audit_signer.public_pem())
    raw = tmp_path / "audit.b64"
    raw.write_text(log.audit_signer.public_b64 + "\n")

    done = run_cli(["audit", "verify", "--public-key", str(pem)], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"trust anchor: {pem} (key_id {log.audit_signer.key_id}), given out of band" in done.stdout
    )
    assert f"checked {N:,} events, {len(HEADS)} signed tree heads and 4 tiles" in done.stdout
    assert "intact" in done.stdout

    done = run_cli(["audit", "verify", "--public-key", str(raw), "--jobs", "1"], env)
    assert done.returncode == 0, done.stdout + done.stderr

    done = run_cli(["audit", "verify"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trust anchor: the database's audit_signing_keys (1 key(s))" in done.stdout

    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    done = run_cli(["audit", "verify", "--public-key", str(other)], env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "TAMPERED: tree head of size 1: signed by key" in done.stdout

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    done = run_cli(["audit", "verify", "--public-key", str(garbage)], env)
    assert done.returncode == 2
    assert "not an Ed25519 public key" in done.stderr

    async def change(uow: UnitOfWork) -> None:
        await uow.conn.execute(audit_log.delete().where(audit_log.c.seq == 400))

    await tamper(log, change)
    done = run_cli(["audit", "verify", "--public-key", str(pem)], env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "TAMPERED: seq 400: missing (no row for seq 400)" in done.stdout
    assert "tree head of size 556: root_hash differs" in done.stdout

    # Each run is itself an audited read of the trail, with its verdict.
    async with log.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(sa.select(audit_outbox.c.event).order_by(audit_outbox.c.id))
        runs = [e for e in (orjson.loads(t) for (t,) in rows) if e["action"] == "audit.verify"]
    assert [e["outcome"]["status"] for e in runs] == [
        "success", "success", "success", "failure", "failure"
    ]  # fmt: skip
    assert runs[-1]["outcome"]["code"] == "audit_log_tampered"
    assert runs[-1]["details"]["first_problem"] == "seq 400: missing (no row for seq 400)"
    assert runs[-1]["details"]["trust_anchor"] == "out_of_band"
    assert runs[-1]["actor"]["role"] == "cli"
