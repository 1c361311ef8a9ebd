"""Relay throughput to NATS JetStream, beside raw nats-py publishes of the same messages.

Fills a fresh database (SQLite under a temp dir by default, or --database-url) with --events
events through the real path (``hammerlock.audit.service.record_many`` in transactions, then the
sequencer), then times, each into a fresh stream on the NATS server at --nats (file storage,
``Nats-Msg-Id`` and ``Hammerlock-Seq`` headers, the same payloads):

1. baseline: nats-py's own ``JetStreamContext.publish_async`` for every message, then awaiting
   every ack future (no database);
2. baseline: the sink's technique written inline — core publishes with a reply subject on one
   inbox, acks counted by a callback, one page of --page-size at a time (no database);
3. the relay (``Relay`` + ``JetStreamSink``): lease, page read, publish, acks, position advance
   for every page, from seq 0 to the end of the log;
4. the relay into ``MemorySink`` (the database side alone: what the relay costs without NATS).

Usage: .venv/bin/python bench/relay_bench.py [--events N] [--page-size P] [--nats URL]
       [--database-url postgresql+asyncpg://…] [--storage file|memory]
Prints figures only; nothing is written to docs/benchmarks.md. Every stream it creates is
deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.js.api import StorageType, StreamConfig

from hammerlock.audit import service as audit
from hammerlock.audit.model import Context
from hammerlock.audit.relay import Relay
from hammerlock.audit.sinks import AuditSink, RelayedEvent
from hammerlock.audit.sinks.jetstream import JetStreamSink, subject_for
from hammerlock.audit.sinks.memory import MemorySink
from hammerlock.bootstrap import Container
from hammerlock.db.migrate import migrate
from hammerlock.settings import Settings

ACTIONS = ("ledger.transfers.create", "keys.create", "auth.denied", "audit.events.read")
FILL_BATCH = 2_000


def row(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<50} {value:>16}  {note}".rstrip())


async def fill(container: Container, n: int) -> None:
    ctx = Context.system("bench")
    for start in range(0, n, FILL_BATCH):
        async with container.db.transaction() as uow:
            await audit.record_many(
                uow,
                [
                    ctx.event(
                        ACTIONS[i % len(ACTIONS)],
                        resource_type="ledger_request",
                        resource_id=f"req_{i}",
                        ts_us=uow.clock.now_us(),
                        details={"transfers": i % 8 + 1, "digest": f"{i:064x}"},
                    )
                    for i in range(start, min(n, start + FILL_BATCH))
                ],
            )
        while await container.sequencer.run_once():
            pass


class Streams:
    """Fresh streams on the server, each with its own subjects; all deleted by ``close``."""

    def __init__(self, url: str, storage: str) -> None:
        self.url = url
        self.storage = StorageType.FILE if storage == "file" else StorageType.MEMORY
        self.made: list[str] = []

    def new(self) -> tuple[str, str]:
        token = secrets.token_hex(4)
        name = f"HL_BENCH_{token}"
        self.made.append(name)
        return name, f"hlbench.{token}.audit"

    async def create(self, nc: nats.NATS, name: str, prefix: str) -> None:
        await nc.jetstream().add_stream(
            StreamConfig(
                name=name,
                subjects=[f"{prefix}.>"],
                storage=self.storage,
                duplicate_window=7_200,
                deny_delete=True,
                deny_purge=True,
            )
        )

    async def count(self, name: str) -> int:
        nc = await nats.connect(self.url)
        try:
            return int((await nc.jetstream().stream_info(name)).state.messages)
        finally:
            await nc.close()

    async def close(self) -> None:
        nc = await nats.connect(self.url)
        try:
            for name in self.made:
                await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()


async def raw_publish_async(streams: Streams, events: list[RelayedEvent]) -> float:
    name, prefix = streams.new()
    nc = await nats.connect(streams.url)
    try:
        await streams.create(nc, name, prefix)
        js = nc.jetstream(timeout=30, publish_async_max_pending=len(events))
        started = time.perf_counter()
        futures = [
            await js.publish_async(
                subject_for(prefix, e.action),
                e.payload(),
                headers={"Nats-Msg-Id": e.event_id, "Hammerlock-Seq": str(e.seq)},
            )
            for e in events
        ]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=120)
        elapsed = time.perf_counter() - started
    finally:
        await nc.close()
    assert await streams.count(name) == len(events)
    return elapsed


async def raw_pipelined(streams: Streams, events: list[RelayedEvent], page_size: int) -> float:
    name, prefix = streams.new()
    nc = await nats.connect(streams.url)
    try:
        await streams.create(nc, name, prefix)
        inbox = nc.new_inbox()
        state = {"waiting": 0}
        done = asyncio.Event()

        async def on_ack(_msg: object) -> None:
            state["waiting"] -= 1
            if state["waiting"] == 0:
                done.set()

        await nc.subscribe(f"{inbox}.>", cb=on_ack, pending_msgs_limit=2 * page_size)
        started = time.perf_counter()
        for lo in range(0, len(events), page_size):
            page = events[lo : lo + page_size]
            state["waiting"] = len(page)
            done.clear()
            for i, e in enumerate(page):
                await nc.publish(
                    subject_for(prefix, e.action),
                    e.payload(),
                    reply=f"{inbox}.{lo + i}",
                    headers={"Nats-Msg-Id": e.event_id, "Hammerlock-Seq": str(e.seq)},
                )
            await asyncio.wait_for(done.wait(), timeout=60)
        elapsed = time.perf_counter() - started
    finally:
        await nc.close()
    assert await streams.count(name) == len(events)
    return elapsed


async def relay_run(container: Container, sink: AuditSink, n: int, page_size: int) -> float:
    relay = Relay(container.db, sink, node="bench", page_size=page_size)
    try:
        await relay.run_once()  # first page pays for connecting and stream setup: not timed
        started = time.perf_counter()
        while relay.position != n:
            if await relay.run_once() == 0:
                raise RuntimeError(f"relay stopped at {relay.position} of {n}")
        return time.perf_counter() - started
    finally:
        await relay.close()


async def timed(label: str, n: int, run: Callable[[], Awaitable[float]]) -> float:
    elapsed = await run()
    rate = n / elapsed
    row(label, f"{rate:,.0f} ev/s", f"({elapsed:.2f} s)")
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--page-size", type=int, default=1_000)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--storage", choices=("file", "memory"), default="file")
    args = parser.parse_args()
    n, page = args.events, args.page_size

    with tempfile.TemporaryDirectory(prefix="hl-relay-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=args.database_url)
        container = Container(settings, background=False)
        streams = Streams(args.nats, args.storage)
        try:
            await migrate(container.db)
            started = time.perf_counter()
            await fill(container, n)
            print(
                f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus"
            )
            print(
                f"database {container.db.dialect}, {n:,} events filled in "
                f"{time.perf_counter() - started:.1f} s; page {page}; stream storage {args.storage}"
            )
            probe = Relay(container.db, MemorySink("probe"), node="bench", page_size=10_000)
            events: list[RelayedEvent] = []
            while len(events) < n:
                events.extend(await probe._read_page(len(events)))  # the relay's own messages
            await probe.close()

            print("\nrelay to JetStream, events acknowledged per second (higher is better)")
            await timed(
                "baseline: nats-py js.publish_async, all acks",
                n,
                lambda: raw_publish_async(streams, events),
            )
            await timed(
                "baseline: pipelined publish + reply inbox, per page",
                n,
                lambda: raw_pipelined(streams, events, page),
            )
            name, prefix = streams.new()
            sink = JetStreamSink(
                args.nats, stream=name, subject_prefix=prefix, storage=args.storage
            )
            relayed = await timed(
                "Relay + JetStreamSink (db read, acks, advance)",
                n,
                lambda: relay_run(container, sink, n, page),
            )
            assert await streams.count(name) == n
            await timed(
                "Relay + MemorySink (the database side alone)",
                n,
                lambda: relay_run(container, MemorySink("memory"), n, page),
            )
            verdict = "meets" if relayed >= 20_000 else "misses"
            print(f"\ntarget >= 20,000 ev/s to JetStream: {verdict} ({relayed:,.0f} ev/s)")
        finally:
            await streams.close()
            await container.stop()


if __name__ == "__main__":
    asyncio.run(main())
