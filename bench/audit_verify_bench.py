"""``hammerlock audit verify`` over a synthetic log, beside a baseline from the same run.

Fills a fresh database (SQLite under a temp dir by default, or --database-url) with --events
schema-v1 events exactly as the sequencer stores them (canonical RFC 8785 bytes with their
seq, leaf hashes, the level-8 tiles, an Ed25519-signed tree head every --head-every events,
the sequencer's position and frontier), then times:

1. baseline: the raw driver reading every row's canonical text and SHA-256(0x00 || bytes) it
   with hashlib (no other check) — the floor for any verifier in Python;
2. ``hammerlock.audit.verify.verify()`` checking rows in this process;
3. the same with worker processes (one per CPU, at most 8), as the CLI runs it;
4. ``hammerlock audit verify --public-key`` as a user runs it (a subprocess: interpreter start,
   imports, schema check and the audit record of the verification included).

The fill writes rows with the raw driver and orjson (sorted keys, ASCII-only content, which is
byte for byte RFC 8785 for such events: checked against rfc8785 on the first 1,000) because the
sequencer's pure-Python JCS would make filling a million events take minutes.

Usage: .venv/bin/python bench/audit_verify_bench.py [--events N] [--head-every K]
       [--database-url postgresql+asyncpg://…] [--reuse DATA_DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench_support import append_section
from hammerlock.audit.merkle import CompactTree, leaf_hash, root_from_leaf_hashes, sign_tree_head
from hammerlock.audit.signing import key_id_for, load_public_key
from hammerlock.audit.storage import TILE_LEVEL, TILE_SIZE
from hammerlock.audit.verify import TrustAnchor, Workers, verify
from hammerlock.clock import FixedClock, format_rfc3339
from hammerlock.db.engine import create_database
from hammerlock.db.migrate import migrate
from hammerlock.settings import Settings

ACTIONS = ("ledger.transfers.create", "keys.create", "auth.denied", "audit.events.read")
BATCH = 20_000


def event(seq: int, ts_us: int) -> dict[str, object]:
    return {
        "event_id": f"evt_{seq:024x}",
        "ts": format_rfc3339(ts_us),
        "actor": {"principal_id": f"prn_{seq % 97:04d}", "role": "service", "key_id": "key_x"},
        "action": ACTIONS[seq % len(ACTIONS)],
        "resource": {"type": "ledger_request", "id": f"req_{seq}"},
        "outcome": {"status": "success", "code": None},
        "origin": {"ip": "10.0.0.7", "user_agent": "bench/1.0", "node": "bench-1"},
        "request_id": f"req_{seq:016x}",
        "details": {"transfers": seq % 8 + 1, "digest": hashlib.sha256(b"%d" % seq).hexdigest()},
        "seq": seq,
    }


def rows(n: int, start_us: int) -> tuple[list[tuple[object, ...]], list[bytes]]:
    out: list[tuple[object, ...]] = []
    hashes: list[bytes] = []
    for seq in range(n):
        ts_us = start_us + seq * 20  # 50,000 events per second
        ev = event(seq, ts_us)
        canonical = orjson.dumps(ev, option=orjson.OPT_SORT_KEYS)
        if seq < 1_000:
            assert canonical == rfc8785.dumps(ev), "the fill's encoding must be RFC 8785"
        digest = leaf_hash(canonical)
        hashes.append(digest)
        resource = ev["resource"]
        actor = ev["actor"]
        assert isinstance(resource, dict)
        assert isinstance(actor, dict)
        out.append(
            (
                seq,
                ev["event_id"],
                ts_us,
                ev["action"],
                actor["principal_id"],
                resource["type"],
                resource["id"],
                canonical.decode(),
                digest.hex(),
            )
        )
    return out, hashes


def tree_data(
    hashes: list[bytes], head_every: int, key: Ed25519PrivateKey, key_id: str, start_us: int
) -> tuple[list[tuple[int, int, str]], list[tuple[object, ...]], list[str]]:
    tiles = [
        (TILE_LEVEL, i, root_from_leaf_hashes(hashes[i * TILE_SIZE : (i + 1) * TILE_SIZE]).hex())
        for i in range(len(hashes) // TILE_SIZE)
    ]
    tree = CompactTree()
    heads: list[tuple[object, ...]] = []
    sizes = [*range(head_every, len(hashes), head_every), len(hashes)]
    done = 0
    for size in sizes:
        tree.extend(hashes[done:size])
        done = size
        ts_us = start_us + size * 20
        root = tree.root().hex()
        timestamp = format_rfc3339(ts_us)
        signature = base64.b64encode(sign_tree_head(key, size, root, timestamp)).decode()
        heads.append((size, root, timestamp, ts_us, key_id, signature))
    return tiles, heads, [h.hex() for h in tree.to_state()]


LOG_SQL = (
    "INSERT INTO audit_log (seq, event_id, ts_us, action, actor_id, resource_type, resource_id, "
    "canonical, leaf_hash) VALUES ({})"
)
HEAD_SQL = (
    "INSERT INTO audit_tree_heads (size, root_hash, timestamp, ts_us, key_id, signature) "
    "VALUES ({})"
)


def fill_sqlite(path: Path, *, log: list[tuple[object, ...]], tiles: list[tuple[int, int, str]],
                heads: list[tuple[object, ...]], key_row: tuple[object, ...],
                state: tuple[int, str]) -> None:  # fmt: skip
    conn = sqlite3.connect(path)
    with conn:
        for i in range(0, len(log), BATCH):
            conn.executemany(LOG_SQL.format(",".join("?" * 9)), log[i : i + BATCH])
        conn.executemany("INSERT INTO audit_tree_tiles (level, idx, hash) VALUES (?,?,?)", tiles)
        conn.executemany(HEAD_SQL.format(",".join("?" * 6)), heads)
        conn.execute("INSERT INTO audit_signing_keys VALUES (?,?,?,?)", key_row)
        conn.execute(
            "UPDATE audit_state SET position = ?, frontier = ? WHERE name = 'sequencer'", state
        )
    conn.close()


async def fill_postgres(dsn: str, *, log: list[tuple[object, ...]],
                        tiles: list[tuple[int, int, str]], heads: list[tuple[object, ...]],
                        key_row: tuple[object, ...], state: tuple[int, str]) -> None:  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        columns = ["seq", "event_id", "ts_us", "action", "actor_id", "resource_type",
                   "resource_id", "canonical", "leaf_hash"]  # fmt: skip
        await conn.copy_records_to_table("audit_log", records=log, columns=columns)
        await conn.copy_records_to_table("audit_tree_tiles", records=tiles)
        await conn.copy_records_to_table(
            "audit_tree_heads",
            records=heads,
            columns=["size", "root_hash", "timestamp", "ts_us", "key_id", "signature"],
        )
        await conn.execute("INSERT INTO audit_signing_keys VALUES ($1,$2,$3,$4)", *key_row)
        await conn.execute(
            "UPDATE audit_state SET position = $1, frontier = $2 WHERE name = 'sequencer'", *state
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the worker processes): a figure
    that, unlike wall time, does not grow when other programs share the machine."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def baseline_sqlite(path: Path) -> float:
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    sha256 = hashlib.sha256
    for (canonical,) in conn.execute("SELECT canonical FROM audit_log ORDER BY seq"):
        sha256(b"\x00" + canonical.encode()).digest()
    conn.close()
    return time.perf_counter() - started


async def baseline_postgres(dsn: str) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    sha256 = hashlib.sha256
    try:
        async with conn.transaction():
            async for row in conn.cursor("SELECT canonical FROM audit_log ORDER BY seq"):
                sha256(b"\x00" + row[0].encode()).digest()
    finally:
        await conn.close()
    return time.perf_counter() - started


async def fill(root: Path, settings: Settings, events: int, head_every: int) -> None:
    """A fresh database under ``root`` with ``events`` events; the public key and the head
    count go to ``root/bench.json`` so ``--reuse`` can time it again without refilling."""
    url = settings.effective_database_url
    if not url.startswith("sqlite"):  # a fresh database of the given name
        base, name = url.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)
        admin = await asyncpg.connect(f"{base}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    db = create_database(settings, FixedClock())
    await migrate(db)
    await db.dispose()
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = key_id_for(raw)
    start_us = FixedClock().now_us()
    t0 = time.perf_counter()
    log, hashes = rows(events, start_us)
    tiles, heads, frontier = tree_data(hashes, head_every, key, key_id, start_us)
    key_row = (key_id, "ed25519", base64.b64encode(raw).decode(), start_us)
    state = (events, orjson.dumps(frontier).decode())
    if url.startswith("sqlite"):
        path = root / "hammerlock.db"
        fill_sqlite(path, log=log, tiles=tiles, heads=heads, key_row=key_row, state=state)
    else:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        await fill_postgres(dsn, log=log, tiles=tiles, heads=heads, key_row=key_row, state=state)
    (root / "audit_public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (root / "bench.json").write_bytes(orjson.dumps({"events": events, "heads": len(heads)}))
    print(f"filled {events:,} events, {len(heads):,} heads in {time.perf_counter() - t0:.1f} s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--head-every", type=int, default=50_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--reuse", type=Path, default=None, help="a data dir a run filled")
    parser.add_argument("--doc", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    root = args.reuse or Path(tempfile.mkdtemp(prefix="hl-verify-bench-"))
    settings = Settings(data_dir=root, database_url=args.database_url)
    url = settings.effective_database_url
    if args.reuse is None:
        await fill(root, settings, args.events, args.head_every)
    filled = orjson.loads((root / "bench.json").read_bytes())
    events, head_count = filled["events"], filled["heads"]
    key_file = root / "audit_public.pem"
    public = load_public_key(key_file.read_bytes())
    print(f"data dir {root} (time it again: --reuse {root})")
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; {url}"
    )
    print(f"load average before the timings: {os.getloadavg()[0]:.1f}")

    cpu_before = _cpu_s()
    if url.startswith("sqlite"):
        base_s = baseline_sqlite(root / "hammerlock.db")
    else:
        base_s = await baseline_postgres(url.replace("postgresql+asyncpg://", "postgresql://"))
    print(
        f"baseline: raw driver read + hashlib leaf hash of every row: {base_s:6.2f} s "
        f"(CPU {_cpu_s() - cpu_before:.2f} s)"
    )

    backend = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    table = [
        f"| {backend}: baseline, raw driver read + hashlib leaf hash | {base_s:.2f} s | |",
    ]
    anchor = TrustAnchor.out_of_band([public], "bench key")
    jobs = min(os.cpu_count() or 1, 8)
    for label, workers in (
        ("verify() in process, 1 job:", None),
        (f"verify() with {jobs} worker processes:", Workers(settings, jobs)),
    ):
        db = create_database(settings, FixedClock())
        cpu_before = _cpu_s()
        started = time.perf_counter()
        report = await verify(db, anchor=anchor, workers=workers)
        took_s = time.perf_counter() - started
        cpu_s = _cpu_s() - cpu_before
        await db.dispose()
        assert report.ok, [str(p) for p in report.problems[:5]]
        assert (report.events, report.heads) == (events, head_count)
        print(
            f"{label:51}{took_s:6.2f} s ({took_s / events * 1e6:.2f} µs/event; "
            f"CPU {cpu_s:.2f} s in all processes)"
        )
        table.append(f"| {backend}: `{label.rstrip(':')}` | {took_s:.2f} s (CPU {cpu_s:.2f} s) | |")

    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMMERLOCK_")}
    env.update(HAMMERLOCK_DATA_DIR=str(root), HAMMERLOCK_LOG_LEVEL="warning")
    if args.database_url:
        env["HAMMERLOCK_DATABASE_URL"] = args.database_url
    cli = str(Path(sys.executable).with_name("hammerlock"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = children.ru_utime + children.ru_stime
    started = time.perf_counter()
    done = subprocess.run(
        [cli, "audit", "verify", "--public-key", str(key_file)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    cli_s = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu_s = children.ru_utime + children.ru_stime - cpu_before
    assert done.returncode == 0, done.stdout + done.stderr
    print(
        f"{'hammerlock audit verify --public-key (subprocess):':51}{cli_s:6.2f} s "
        f"(CPU {cli_cpu_s:.2f} s)"
    )
    print(done.stdout.strip())
    ok = "✅" if cli_s < 10 else "❌"
    table.append(
        f"| {backend}: **`hammerlock audit verify --public-key`** (what a user runs) | "
        f"**{cli_s:.2f} s** (CPU {cli_cpu_s:.2f} s) | < 10 s {ok} |"
    )
    if args.doc:
        append_section(
            f"`make bench-audit`: `audit verify` over {events:,} events, {backend} "
            "(`bench/audit_verify_bench.py`)",
            ["| | time | target |", "|---|---:|---:|", *table],
        )


if __name__ == "__main__":
    asyncio.run(main())
