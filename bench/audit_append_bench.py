"""Audit append rate: committed outbox events → sequenced, hashed, in the tree, stored.

For each backend, in one run:

1. "business": ``--events`` schema-v1 events (≈ 450 bytes of canonical JSON each) are committed
   to ``audit_outbox`` as the audit service writes them (not timed: that is the business
   transactions' cost, see audit_outbox_bench.py);
2. the sequencer drains that backlog with ``run_once`` (batches of ``--batch``): seq, RFC 8785
   canonical form, leaf hash, Merkle tree (frontier and 256-leaf tiles), ``audit_log`` insert,
   outbox delete, one Ed25519-signed head per batch, lease fencing — wall time and this
   process's CPU time (the sequencer runs on one core; PostgreSQL's own processes are apart);
3. baseline, same run, same rows: the raw driver inserting exactly the rows the sequencer
   wrote into ``audit_log`` of a second fresh database (sqlite3 ``executemany`` / asyncpg
   ``COPY``, one transaction per batch), plus a raw hashlib Merkle append of the same
   canonical bytes in memory (leaf hash + compact-range stack, no class, no checks).

Target (issue #4): ≥ 50,000 events/s from commit to sequenced and stored, on one core.

Usage: .venv/bin/python bench/audit_append_bench.py [--events N] [--batch B]
       [--backend sqlite|postgresql]… [--doc]   (--doc appends the table to docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench_support import append_section, cpu_s, dsn, scratch_database, sqlite_path
from hammerlock.audit.model import Actor, Context, Origin
from hammerlock.audit.sequencer import Sequencer
from hammerlock.audit.service import canonical_bytes
from hammerlock.audit.signing import AuditSigner
from hammerlock.audit.storage import LOG_COLUMNS

ACTIONS = ("ledger.transfers.create", "keys.create", "auth.denied", "audit.events.read")
TARGET = 50_000


def outbox_rows(n: int, start_us: int) -> list[tuple[str, int, str, str]]:
    ctx = Context(
        actor=Actor(principal_id="prn_bench", role="service", key_id="key_bench"),
        origin=Origin(ip="10.0.0.7", user_agent="bench/1.0", node="bench-1"),
        request_id="req_bench",
    )
    rows = []
    for i in range(n):
        event = ctx.event(
            ACTIONS[i % len(ACTIONS)],
            resource_type="ledger_transfer_batch",
            resource_id=f"tr_{i}",
            ts_us=start_us + i * 20,
            details={"count": i % 8 + 1, "digest": hashlib.sha256(b"%d" % i).hexdigest()},
        )
        rows.append((event.event_id, event.ts_us, event.action, canonical_bytes(event).decode()))
    return rows


async def fill_outbox(backend: str, settings: Any, rows: list[tuple[str, int, str, str]]) -> None:
    sql = "INSERT INTO audit_outbox (event_id, ts_us, action, event) VALUES "
    if backend == "sqlite":
        conn = sqlite3.connect(sqlite_path(settings))
        with conn:
            conn.executemany(sql + "(?, ?, ?, ?)", rows)
        conn.close()
        return
    pg = await asyncpg.connect(dsn(settings))
    try:
        await pg.copy_records_to_table(
            "audit_outbox", records=rows, columns=["event_id", "ts_us", "action", "event"]
        )
    finally:
        await pg.close()


async def read_log(backend: str, settings: Any) -> list[tuple[Any, ...]]:
    query = f"SELECT {', '.join(LOG_COLUMNS)} FROM audit_log ORDER BY seq"
    if backend == "sqlite":
        conn = sqlite3.connect(sqlite_path(settings))
        rows = conn.execute(query).fetchall()
        conn.close()
        return rows
    pg = await asyncpg.connect(dsn(settings))
    try:
        return [tuple(r) for r in await pg.fetch(query)]
    finally:
        await pg.close()


async def baseline_insert(
    backend: str, settings: Any, rows: list[tuple[Any, ...]], batch: int
) -> float:
    """Seconds for the raw driver to insert ``rows`` into audit_log, one transaction a batch."""
    marks = ", ".join("?" * len(LOG_COLUMNS))
    if backend == "sqlite":
        conn = sqlite3.connect(sqlite_path(settings), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                f"INSERT INTO audit_log ({', '.join(LOG_COLUMNS)}) VALUES ({marks})",
                rows[i : i + batch],
            )
            conn.execute("COMMIT")
        took = time.perf_counter() - started
        conn.close()
        return took
    pg = await asyncpg.connect(dsn(settings))
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with pg.transaction():
                await pg.copy_records_to_table(
                    "audit_log", records=rows[i : i + batch], columns=list(LOG_COLUMNS)
                )
        return time.perf_counter() - started
    finally:
        await pg.close()


def baseline_merkle(canonical: list[bytes]) -> float:
    """Seconds for a raw hashlib leaf hash + compact-range append of every entry."""
    sha256 = hashlib.sha256
    started = time.perf_counter()
    stack: list[bytes] = []
    for index, entry in enumerate(canonical):
        node = sha256(b"\x00" + entry).digest()
        size = index
        while size & 1:
            node = sha256(b"\x01" + stack.pop() + node).digest()
            size >>= 1
        stack.append(node)
    return time.perf_counter() - started


async def run(backend: str, events: int, batch: int, tmp: Path) -> list[str]:
    rows = outbox_rows(events, 1_767_225_600_000_000)
    async with scratch_database(backend) as (db, settings):
        await fill_outbox(backend, settings, rows)
        signer = AuditSigner.load_or_create(tmp / f"bench-{backend}.pem")
        sequencer = Sequencer(db, signer, node="bench", archive_dir=tmp / backend, batch_max=batch)
        cpu_before, started = cpu_s(), time.perf_counter()
        done = 0
        while appended := await sequencer.run_once():
            done += appended
        wall_s, cpu = time.perf_counter() - started, cpu_s() - cpu_before
        assert done == events, (done, events)
        log_rows = await read_log(backend, settings)
    async with scratch_database(backend) as (_db, settings):
        insert_s = await baseline_insert(backend, settings, log_rows, batch)
    merkle_s = baseline_merkle([r[7].encode() for r in log_rows])
    base_s = insert_s + merkle_s
    print(
        f"{backend}: sequencer {events / wall_s:,.0f} events/s ({wall_s:.2f} s wall, CPU "
        f"{cpu:.2f} s = {events / cpu:,.0f} events per CPU-second); baseline raw insert "
        f"{events / insert_s:,.0f}/s + raw Merkle {events / merkle_s:,.0f}/s = "
        f"{events / base_s:,.0f}/s"
    )
    ok = "✅" if events / wall_s >= TARGET else "❌"
    return [
        (
            f"| {backend}: raw driver insert of the same rows (baseline) | "
            f"{events / insert_s:,.0f} | | |"
        ),
        (
            f"| {backend}: raw hashlib Merkle append in memory (baseline) | "
            f"{events / merkle_s:,.0f} | | |"
        ),
        f"| {backend}: both baselines together | {events / base_s:,.0f} | 1.00x | |",
        (
            f"| {backend}: sequencer, outbox → `audit_log` + tree + signed heads | "
            f"**{events / wall_s:,.0f}** ({events / cpu:,.0f} per CPU-s) | "
            f"{base_s / wall_s:.2f}x | ≥ {TARGET:,} {ok} |"
        ),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--doc", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hl-audit-append-"))
    lines = [
        (
            f"{args.events:,} events (≈ {len(outbox_rows(1, 0)[0][3]):,} bytes of canonical JSON "
            "each, seq excluded), "
            f"sequencer batches of {args.batch:,}; events/s, wall clock (CPU: this process only)."
        ),
        "",
        "| | events/s | x baseline | target |",
        "|---|---:|---:|---:|",
    ]
    for backend in args.backend or ["sqlite", "postgresql"]:
        lines += await run(backend, args.events, args.batch, tmp)
    if args.doc:
        append_section(
            "`make bench-audit`: audit append rate (`bench/audit_append_bench.py`)", lines
        )


if __name__ == "__main__":
    asyncio.run(main())
