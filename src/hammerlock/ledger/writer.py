"""Group commit: concurrent ledger requests coalesced into one database transaction.

Requests queue (bounded) and one writer task drains the queue into a batch of at most
``max_transfers`` transfers, applies each request in arrival order against one locked snapshot
(:func:`hammerlock.ledger.service.post_requests`) and commits once: one INSERT for all the
transfers and one UPDATE per touched account, however hot. Each waiter gets its own results.

If a batch fails (a transient database error that outlived its retries, or a bug one request
triggers), its requests are re-run one by one so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy.exc import IntegrityError

from hammerlock.db.engine import Database
from hammerlock.db.retry import in_transaction_with_retries, transient
from hammerlock.ledger.errors import LedgerBusy
from hammerlock.ledger.service import LedgerRequest, post_requests
from hammerlock.tasks import cancel_and_wait

__all__ = ["LedgerWriter", "run_with_retries"]

log = structlog.get_logger("hammerlock.ledger.writer")

_QUEUE_LIMIT = 10_000


def _retryable(exc: BaseException) -> bool:
    # any integrity error, SQLite's included: a concurrent insert of the same transfer id, which
    # the next try answers `exists`
    return isinstance(exc, IntegrityError) or transient(exc)


async def run_with_retries(db: Database, requests: Sequence[LedgerRequest]) -> list[list[str]]:
    """One transaction for ``requests``, retried on deadlocks, serialization and id races."""
    return await in_transaction_with_retries(
        db,
        lambda uow: post_requests(uow, requests),
        event="ledger.batch_retry",
        retryable=_retryable,
    )


@dataclass(slots=True)
class _Job:
    request: LedgerRequest
    future: asyncio.Future[list[str]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def size(self) -> int:
        return max(len(self.request.transfers), 1)


class LedgerWriter:
    def __init__(
        self, db: Database, *, max_transfers: int = 8_190, linger_ms: int = 0, timeout_s: float = 30
    ) -> None:
        self._db = db
        self._max = max_transfers
        self._linger_s = linger_ms / 1000
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self._carry: _Job | None = None
        self._taken: list[_Job] = []  # the batch being gathered or written (answered at stop)
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.requests = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def stop(self) -> None:
        if self._task is None:
            return
        still_running = await cancel_and_wait([self._task])
        self._task = None
        if still_running:  # it may still take queued requests: leave them to it
            return
        waiting = [] if self._carry is None else [self._carry]
        self._carry = None
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for job in waiting:  # never taken into a batch: nothing of them committed
            _fail(job, LedgerBusy("the server is stopping; retry with the same Idempotency-Key"))
        taken, self._taken = self._taken, []
        for job in taken:  # cancelled while gathered or written: a commit may have landed
            _fail(
                job,
                LedgerBusy(
                    "the server stopped during the request; it may have committed — retry with "
                    "the same Idempotency-Key (transfers are idempotent by id)"
                ),
            )

    async def submit(self, request: LedgerRequest) -> list[str]:
        if self._task is None:  # not started (CLI, tests): no batching, same semantics
            [results] = await run_with_retries(self._db, [request])
            return results
        job = _Job(request)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise LedgerBusy("the ledger's queue is full; retry shortly") from None
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self._timeout_s)
        except TimeoutError:
            raise LedgerBusy(
                "the ledger did not answer in time; the request may still commit — retry with "
                "the same Idempotency-Key (transfers are idempotent by id)"
            ) from None

    async def _next_batch(self) -> list[_Job]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], first.size
        self._taken = batch  # from here on, stop() answers it
        if self._linger_s:
            await asyncio.sleep(self._linger_s)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if size + job.size > self._max:
                self._carry = job
                break
            batch.append(job)
            size += job.size
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            live = [j for j in batch if not j.future.done()]
            if live:
                await self._process(live)
            self._taken = []

    async def _process(self, batch: list[_Job]) -> None:
        self.batches += 1
        self.requests += len(batch)
        try:
            results = await run_with_retries(self._db, [j.request for j in batch])
        except Exception as exc:  # noqa: BLE001 - isolated below, then re-raised per request
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.warning("ledger.batch_failed_isolating", size=len(batch), error=type(exc).__name__)
            for job in batch:
                await self._process([job])
            return
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)


def _fail(job: _Job, exc: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
