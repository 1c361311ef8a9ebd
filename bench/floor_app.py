"""The floor under a bid request: the same route, body and headers as hammerlock's bid, with
none of its work — run by `bench/auction_bench.py` under uvicorn with the options `hammerlock
serve` uses (httptools, uvloop, one worker, no access log), driven by the same wrk script.

`FLOOR_MODE=empty` answers 201 with a bid-shaped JSON body: FastAPI, pydantic and uvicorn only.
`FLOOR_MODE=insert` also inserts the bid row into `bench_bids` (a copy of `lot_bids`) through an
asyncpg pool, one transaction per request. `FLOOR_MODE=batch` group-commits the same rows: one
writer task inserts whatever has queued (`executemany`, one transaction) and then answers them —
the cheapest durable bid this stack can make (no key check, no proxy bidding, no lot row, no
audit event, no idempotency receipt).

What is left between these floors and hammerlock's figures is the cost of hammerlock's own work;
what is left between the floors and the issue's targets cannot be won by any code in this stack
on the same machine.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
import orjson
from fastapi import FastAPI, Header, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

MODE = os.environ.get("FLOOR_MODE", "empty")
DSN = os.environ.get("FLOOR_DSN", "")
INSERT = (
    "INSERT INTO bench_bids (lot_id, seq, id, bidder_id, max_amount, kind, status, price_after, "
    "leader_after, placed_us, created_by_key_id, idempotency_key) "
    "VALUES ($1, $2, $3, $4, $5, 'proxy', 'accepted', $6, $7, $8, $9, $10)"
)
pools: list[asyncpg.Pool] = []  # FLOOR_MODE=insert: its one pool
queue: asyncio.Queue[tuple[tuple[object, ...], asyncio.Future[None]]] = asyncio.Queue()
seqs = itertools.count(1)


async def writer(conn: asyncpg.Connection) -> None:
    """Group commit: take what has queued (at least one), write it in one transaction, answer.
    A waiter that gave up (its request timed out) is skipped, so the writer never dies of it."""
    while True:
        batch = [await queue.get()]
        while not queue.empty():
            batch.append(queue.get_nowait())
        failed: Exception | None = None
        try:
            async with conn.transaction():
                await conn.executemany(INSERT, [row for row, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every waiter learns of it
            failed = exc
        for _, done in batch:
            if done.done():
                continue
            if failed is None:
                done.set_result(None)
            else:
                done.set_exception(failed)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    if MODE == "insert":
        pools.append(await asyncpg.create_pool(DSN, min_size=20, max_size=20))
        yield
        await pools.pop().close()
    elif MODE == "batch":
        conn = await asyncpg.connect(DSN)
        task = asyncio.create_task(writer(conn))
        yield
        task.cancel()
        await conn.close()
    else:
        yield


app = FastAPI(lifespan=lifespan)


class BidIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_amount: Annotated[StrictInt, Field(ge=1, le=10**15)]
    bidder_id: Annotated[str | None, Field(max_length=64)] = None


@app.post("/v1/lots/{lot_id}/bids", response_model=None)
async def bid(
    lot_id: Annotated[str, Field(max_length=64)],
    body: BidIn,
    authorization: Annotated[str, Header(max_length=200)],
    idempotency_key: Annotated[str, Header(max_length=255)],
) -> Response:
    """Answers like hammerlock's route: a ready response of orjson bytes (no response model)."""
    bid_id = "bid_" + uuid.uuid4().hex[:20]
    seq = next(seqs)
    now_us = time.time_ns() // 1_000
    bidder = "bdr_" + authorization[-8:]
    row = (
        lot_id, seq, bid_id, bidder, body.max_amount, body.max_amount, bidder, now_us,
        authorization[-12:], idempotency_key,
    )  # fmt: skip
    if pools:
        async with pools[0].acquire() as conn:
            await conn.execute(INSERT, *row)
    elif MODE == "batch":
        done = asyncio.get_running_loop().create_future()
        queue.put_nowait((row, done))
        await asyncio.wait_for(done, timeout=30)
    answer = {
        "id": bid_id,
        "lot_id": lot_id,
        "seq": seq,
        "bidder_id": bidder,
        "max_amount": body.max_amount,
        "status": "accepted",
        "placed_at": now_us,
        "lot": {"id": lot_id, "status": "open", "current_price": body.max_amount, "seq": seq},
    }
    return Response(orjson.dumps(answer), 201, media_type="application/json")
