"""Bids, group-committed (docs/adr/0013-bids-group-commit.md).

A bid is read-lock-decide-write on its lot's row, so one lot takes one bid per commit at best —
a few hundred a second on a disk that needs a few milliseconds per fsync. Here concurrent bids
queue to one writer task per process, which takes everything queued (any lots, at most
``max_batch`` bids) into **one transaction**:

1. the requests' idempotency receipts are looked up (one statement): stored answers replay;
2. the batch's lots are locked in id order with ``SKIP LOCKED`` (one statement; a fixed order,
   so two batches never deadlock), bids already made under the same (key, Idempotency-Key) are
   found (one statement), and the bidders' standing (two statements);
3. the bids are decided one after the other, in arrival order, by the same pure model as before
   (:func:`hammerlock.auctions.model.apply_bid`), each seeing the lot as the previous one left it —
   so the sequence is strict per lot and every answer is the one a one-at-a-time run would give;
4. one INSERT for all accepted bids, one UPDATE per touched lot, one INSERT for their audit
   events and one for the answers (idempotency receipts), and one commit.

Bids on a lot whose row another transaction holds (a close, a settlement, another process's
batch) are not waited for: they move to that lot's own *lane*, a task that waits for the lock
and drains the lot's bids (new ones included) and then ends — so a busy lot stalls only itself.

Each waiter gets its own answer. A batch that fails on a transient error (deadlock,
serialization, a twin request in another process winning a key) is retried whole; one that
fails otherwise is re-run one request at a time, so one bad request cannot fail its neighbours.
Several processes are safe: they meet on the lot rows' locks, as single bids did.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import structlog
from sqlalchemy.exc import TimeoutError as PoolTimeout

from hammerlock.auctions import storage
from hammerlock.auctions.errors import (
    BidsBusy,
    BidTooHigh,
    BidTooLow,
    CardRequired,
    DepositRequired,
    LotNotFound,
    LotNotOpen,
    OwnLot,
)
from hammerlock.auctions.model import (
    Bid,
    BidKind,
    BidRefusal,
    DepositStatus,
    Lot,
    LotStatus,
    apply_bid,
    ask_for,
    extend_end,
    new_id,
)
from hammerlock.audit import service as audit
from hammerlock.audit.model import AuditEvent, Context
from hammerlock.db.engine import Database
from hammerlock.db.receipts import (
    Receipt,
    ReceiptConflict,
    Stored,
    check_receipts,
    store_receipts,
)
from hammerlock.db.retry import in_transaction_with_retries, transient
from hammerlock.db.uow import UnitOfWork
from hammerlock.errors import DomainError
from hammerlock.escrow.model import largest_hammer
from hammerlock.parties import service as parties
from hammerlock.parties.errors import PartyNotFound
from hammerlock.tasks import cancel_and_wait

__all__ = [
    "REUSE_DETAIL",
    "Answer",
    "AskPayments",
    "BidRequest",
    "BidWriter",
    "KeyReused",
    "Outcome",
    "Render",
    "bid_event",
    "lot_event",
    "may_see",
    "run_batch",
]

log = structlog.get_logger("hammerlock.auctions.bidding")

_QUEUE_LIMIT: Final = 10_000


REUSE_DETAIL: Final = (
    "this Idempotency-Key was used with a different request; use a new key for a new request"
)


class KeyReused(DomainError):
    """The (key, Idempotency-Key) already made another bid (its stored answer may have expired:
    the bid row keeps the key): answering with that bid would say a bid was placed when none
    was."""

    code = "idempotency_key_reuse"
    title = "Unprocessable content"


def _same_bid(earlier: Bid, request: BidRequest) -> bool:
    return (
        earlier.kind is BidKind.PROXY
        and earlier.lot_id == request.lot_id
        and earlier.bidder_id == request.bidder_id
        and earlier.max_amount == request.max_amount
    )


class AskPayments(Exception):
    """Leave the bid's transaction to ask the payments service about these deposit intents."""

    def __init__(self, intent_ids: list[str]) -> None:
        super().__init__("deposit intents to check")
        self.intent_ids = intent_ids


@dataclass(frozen=True, slots=True)
class Answer:
    """A request's answer as stored for replay: status, replayed headers, body."""

    status_code: int
    headers: dict[str, str]
    body: bytes
    replayed: bool = False


# Turns a decided bid (or the domain error that refused it) into the caller's answer — the
# HTTP route renders its JSON here, so the answer is stored in the bid's own transaction.
Render = Callable[[tuple[Bid, Lot] | DomainError], Answer]
Outcome = tuple[Bid, Lot] | DomainError | Answer | ReceiptConflict | AskPayments


@dataclass(frozen=True, slots=True)
class BidRequest:
    ctx: Context
    lot_id: str
    bidder_id: str
    max_amount: int
    idempotency_key: str | None = None
    receipt: Receipt | None = None
    render: Render | None = None
    deposit_ok: bool | None = None  # None: not asked yet (a deposit lot steps out to ask)


def may_see(ctx: Context, lot: Lot) -> bool:
    """Staff and the service see every lot; a seller its own; a bidder every lot past draft."""
    role = ctx.actor.role
    if role == "seller":
        return lot.seller_id == ctx.actor.principal_id
    if role == "bidder":
        return lot.status is not LotStatus.DRAFT
    return True


def lot_event(
    ctx: Context, lot: Lot, action: str, *, ts_us: int, extra: dict[str, object] | None = None
) -> AuditEvent:
    s = lot.standing
    return ctx.event(
        action,
        resource_type="lot",
        resource_id=lot.id,
        ts_us=ts_us,
        details={
            "status": lot.status.value,
            "seller_id": lot.seller_id,
            "currency": lot.currency,
            "price": s.price,
            "leader": s.leader_id,
            "bid_count": s.bid_count,
            "hammer_price": lot.hammer_price,
            "winner_id": lot.winner_id,
            **(extra or {}),
        },
    )


def bid_event(ctx: Context, lot: Lot, bid: Bid, action: str, *, extended: bool) -> AuditEvent:
    return ctx.event(
        action,
        resource_type="bid",
        resource_id=bid.id,
        ts_us=bid.placed_us,
        details={
            "lot_id": lot.id,
            "seq": bid.seq,
            "bidder_id": bid.bidder_id,
            "max_amount": bid.max_amount,
            "price_after": bid.price_after,
            "leader_after": bid.leader_after,
            "ends_at_us": lot.ends_at_us,
            "extended": extended,
        },
    )


# -- one batch, one transaction -----------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    """What a batch has decided so far, written at its end."""

    lots: dict[str, Lot]
    versions: dict[str, int]  # each touched lot's version when locked
    made: dict[tuple[str, str], Bid]  # bids already made under (key id, Idempotency-Key)
    ready: dict[str, str]  # bidder id → ready | no_card | not_found
    now_us: int
    bids: list[tuple[Bid, str | None, str | None]] = field(default_factory=list)
    events: list[AuditEvent] = field(default_factory=list)
    answers: list[tuple[Receipt, int, dict[str, str], bytes]] = field(default_factory=list)
    answered: dict[tuple[str, str], tuple[str, Answer]] = field(default_factory=dict)


class LotBusy:
    """The bid's lot is held by another transaction: not decided in this batch (``skip_locked``);
    the writer hands it to the lot's own lane, which waits for the lock."""

    __slots__ = ()


LOT_BUSY: Final = LotBusy()


async def run_batch(
    uow: UnitOfWork, requests: Sequence[BidRequest], *, skip_locked: bool = False
) -> list[Outcome | LotBusy]:
    """Decide ``requests`` in order inside ``uow`` and write them; one outcome per request.
    With ``skip_locked``, bids on a lot held elsewhere are left undecided (:data:`LOT_BUSY`)."""
    receipts = [r.receipt for r in requests if r.receipt is not None]
    decisions, stale = await check_receipts(uow, receipts) if receipts else ([], set())
    decided = iter(decisions)
    prior: list[Stored | ReceiptConflict | None] = [
        next(decided) if r.receipt is not None else None for r in requests
    ]
    live = [r for r, p in zip(requests, prior, strict=True) if p is None]
    locked, held = await storage.lock_lots(uow, (r.lot_id for r in live), skip_locked=skip_locked)
    made = await storage.find_bids_by_requests(
        uow,
        (
            (r.ctx.actor.key_id, r.idempotency_key)
            for r in live
            if r.ctx.actor.key_id is not None and r.idempotency_key is not None
        ),
    )
    ready = await parties.bidders_ready(uow, (r.bidder_id for r in live))
    batch = _Batch(
        lots=locked,
        versions={k: v.version for k, v in locked.items()},
        made=made,
        ready=ready,
        now_us=uow.clock.now_us(),
    )
    outcomes: list[Outcome | LotBusy] = []
    for request, earlier in zip(requests, prior, strict=True):
        if earlier is None and request.lot_id in held:
            outcomes.append(LOT_BUSY)
            continue
        if isinstance(earlier, Stored):
            outcomes.append(Answer(earlier.status_code, earlier.headers, earlier.body, True))
            continue
        if isinstance(earlier, ReceiptConflict):
            outcomes.append(earlier)
            continue
        twin = _twin(batch, request)
        if twin is not None:
            outcomes.append(twin)
            continue
        try:
            decided_bid = await _decide(uow, batch, request)
        except AskPayments as ask:
            outcomes.append(ask)
            continue
        except KeyReused as exc:  # like every reuse, not stored: the key keeps its first request
            outcomes.append(
                exc if request.render is None else ReceiptConflict(exc.code, exc.detail)
            )
            continue
        except DomainError as exc:
            outcomes.append(_answer(batch, request, exc))
            continue
        outcomes.append(_answer(batch, request, decided_bid))
    await storage.insert_bids(uow, batch.bids)
    changed = [
        (batch.lots[lot_id], version)
        for lot_id, version in batch.versions.items()
        if batch.lots[lot_id].version != version
    ]
    if not await storage.save_standings(uow, changed):
        raise RuntimeError("a lot changed under its row lock")
    await audit.record_many(uow, batch.events)
    await store_receipts(uow, batch.answers, stale=stale)
    return outcomes


def _twin(batch: _Batch, request: BidRequest) -> Answer | ReceiptConflict | None:
    """The same key twice in one batch: the second replays the first (or is a reuse)."""
    r = request.receipt
    if r is None or (r.scope, r.key) not in batch.answered:
        return None
    fingerprint, first = batch.answered[(r.scope, r.key)]
    if fingerprint != r.fingerprint:
        return ReceiptConflict("idempotency_key_reuse", REUSE_DETAIL)
    return replace(first, replayed=True)


def _answer(batch: _Batch, request: BidRequest, outcome: tuple[Bid, Lot] | DomainError) -> Outcome:
    if request.render is None:
        return outcome
    answer = request.render(outcome)
    r = request.receipt
    if r is not None:
        batch.answers.append((r, answer.status_code, answer.headers, answer.body))
        batch.answered[(r.scope, r.key)] = (r.fingerprint, answer)
    return answer


async def _decide(uow: UnitOfWork, batch: _Batch, request: BidRequest) -> tuple[Bid, Lot]:
    ctx, now_us = request.ctx, batch.now_us
    lot = batch.lots.get(request.lot_id)
    if lot is None or not may_see(ctx, lot):
        raise LotNotFound(f"no lot {request.lot_id}")
    key_id = ctx.actor.key_id
    if key_id is not None and request.idempotency_key is not None:
        earlier = batch.made.get((key_id, request.idempotency_key))
        if earlier is not None:
            if not _same_bid(earlier, request):  # e.g. a key reused once its answer expired
                raise KeyReused(REUSE_DETAIL)
            return earlier, lot
    lot = _start_if_due(batch, ctx, lot, now_us)
    if lot.status is not LotStatus.OPEN or not lot.starts_at_us <= now_us < lot.ends_at_us:
        raise LotNotOpen(f"lot {lot.id} is not open for bidding", lot_status=lot.status.value)
    bidder_id = request.bidder_id
    if lot.seller_id in {bidder_id, ctx.actor.principal_id}:
        raise OwnLot(f"lot {lot.id} is the bidder's own (a seller cannot bid on its lot)")
    parties.check_owner(ctx, bidder_id, f"bidder {bidder_id}")
    standing = batch.ready.get(bidder_id, "not_found")
    if standing == "not_found":
        raise PartyNotFound(f"no bidder {bidder_id}")
    if standing == "no_card":
        raise CardRequired(
            f"bidder {bidder_id} has no card on file (POST /v1/bidders/{{id}}/cards)"
        )
    if lot.deposit_amount > 0 and not request.deposit_ok:
        held = [
            d.payment_intent
            for d in await storage.deposits_of(uow, lot.id, bidder_id)
            if d.status is DepositStatus.HELD and d.payment_intent is not None
        ]
        if held and request.deposit_ok is None:
            raise AskPayments(held)
        raise DepositRequired(
            f"lot {lot.id} asks for a deposit of {lot.deposit_amount} {lot.currency} "
            "before the first bid (POST /v1/lots/{id}/deposits)",
            deposit_amount=lot.deposit_amount,
        )
    allowed = largest_hammer(lot.currency, lot.buyer_premium_bps)
    if request.max_amount > allowed:
        # The order's total (hammer + premium) must be an amount the API carries, or the lot
        # could never close into an order.
        raise BidTooHigh(
            f"the most a bid on lot {lot.id} may be is {allowed} {lot.currency} (with its "
            "buyer's premium, the largest amount the API carries)",
            max_amount_allowed=allowed,
        )
    after = apply_bid(lot.terms, lot.standing, bidder_id, request.max_amount)
    if isinstance(after, BidRefusal):
        ask = ask_for(lot.terms, lot.standing, bidder_id)
        raise BidTooLow(f"the ask is {ask} {lot.currency}", ask=ask)
    ends_at, extended = extend_end(lot.ends_at_us, lot.latest_end_us, now_us, lot.soft_close_s)
    bid = Bid(
        id=new_id("bid"),
        lot_id=lot.id,
        seq=after.last_seq,
        bidder_id=bidder_id,
        max_amount=request.max_amount,
        kind=BidKind.PROXY,
        status="accepted",
        price_after=after.price or 0,
        leader_after=after.leader_id or bidder_id,
        placed_us=now_us,
        retracted_us=None,
        retracted_by=None,
        retraction_reason=None,
    )
    lot = replace(
        lot,
        standing=after,
        ends_at_us=ends_at,
        extensions=lot.extensions + int(extended),
        version=lot.version + 1,
        updated_us=now_us,
    )
    batch.lots[lot.id] = lot
    batch.bids.append((bid, key_id, request.idempotency_key))
    if key_id is not None and request.idempotency_key is not None:
        batch.made[(key_id, request.idempotency_key)] = bid  # a twin later in the batch
    batch.events.append(bid_event(ctx, lot, bid, "auctions.bid.place", extended=extended))
    return bid, lot


def _start_if_due(batch: _Batch, ctx: Context, lot: Lot, now_us: int) -> Lot:
    if lot.status is not LotStatus.SCHEDULED or lot.starts_at_us > now_us:
        return lot
    started = replace(lot, status=LotStatus.OPEN, version=lot.version + 1, updated_us=now_us)
    batch.lots[lot.id] = started
    batch.events.append(lot_event(ctx, started, "auctions.lot.start", ts_us=now_us))
    return started


# -- the writer -----------------------------------------------------------------------------


async def _run_with_retries(
    db: Database, requests: Sequence[BidRequest], *, skip_locked: bool = False
) -> list[Outcome | LotBusy]:
    return await in_transaction_with_retries(
        db,
        lambda uow: run_batch(uow, requests, skip_locked=skip_locked),
        event="bids.batch_retry",
    )


@dataclass(slots=True)
class _Job:
    request: BidRequest
    future: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class BidWriter:
    """Group commit: one writer task per process takes every bid queued (any lots, at most
    ``max_batch``) into one transaction, locking the lots with ``SKIP LOCKED``. Bids on a lot
    whose row another transaction holds (a close, a settlement, another process's batch) move to
    that lot's own *lane* — a task that waits for the lock and drains the lot's bids, then ends —
    so one busy lot never stalls the others. While a lot has a lane, its new bids go there."""

    def __init__(self, db: Database, *, max_batch: int = 256, timeout_s: float = 30) -> None:
        self._db = db
        self._max = max_batch
        self._timeout_s = timeout_s
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._current: list[_Job] = []
        self._lanes: dict[str, _Lane] = {}
        self._waiting = 0  # bids queued or being decided, over the writer and all lanes
        # A lane holds a connection while it waits for its lot's lock: at most half the pool's
        # do at once, so lots held elsewhere never leave the writer (or anyone) without one.
        size = getattr(db.engine.pool, "size", None)
        self._lane_slots = asyncio.Semaphore(max(1, size() // 2) if callable(size) else 4)
        self.batches = 0
        self.requests = 0
        self.lanes_opened = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bid-writer")

    async def stop(self) -> None:
        tasks = [] if self._task is None else [self._task]
        lanes, self._lanes = list(self._lanes.values()), {}
        tasks += [lane.task for lane in lanes if lane.task is not None]
        self._task = None
        still_running = await cancel_and_wait(tasks)
        # A batch in flight rolled back when its task was cancelled; a task that did not stop
        # (named and logged by cancel_and_wait) may still commit its batch, so its bids are
        # not told "busy" here (their callers' own wait ends in 503 if nobody answers).
        left = [*self._queue] + ([] if still_running else [*self._current])
        for lane in lanes:
            left += [*lane.queue] + ([] if still_running else [*lane.current])
        self._queue.clear()
        self._current = []
        self._waiting = 0  # every bid counted is answered below (a later start counts afresh)
        for job in left:  # nobody will answer these: say so
            if not job.future.done():
                job.future.set_exception(
                    BidsBusy("the server is stopping; retry with the same Idempotency-Key")
                )

    async def submit(self, request: BidRequest) -> Outcome:
        if self._task is None:  # not started (CLI, tests): a batch of one, same semantics
            [outcome] = await _run_with_retries(self._db, [request])
            if isinstance(outcome, LotBusy):  # pragma: no cover - only with skip_locked
                raise TypeError("a bid left undecided without skip_locked")
            return outcome
        if self._waiting >= _QUEUE_LIMIT:
            raise BidsBusy("too many bids are queued; retry shortly")
        job = _Job(request)
        self._waiting += 1
        lane = self._lanes.get(request.lot_id)
        if lane is not None:
            lane.queue.append(job)
        else:
            self._queue.append(job)
            self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self._timeout_s)
        except TimeoutError:
            raise BidsBusy(
                "the bid was not decided in time; it may still be — retry with the same "
                "Idempotency-Key to learn its outcome"
            ) from None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            take = min(len(self._queue), self._max)
            batch = [self._queue.popleft() for _ in range(take)]
            self._current = batch
            await self._process(batch, skip_locked=True)
            self._current = []

    def _to_lane(self, job: _Job) -> None:
        lot_id = job.request.lot_id
        lane = self._lanes.get(lot_id)
        if lane is None:
            lane = self._lanes[lot_id] = _Lane()
            self.lanes_opened += 1
            lane.task = asyncio.create_task(self._drain(lot_id, lane), name=f"bids-{lot_id}")
        lane.queue.append(job)

    async def _drain(self, lot_id: str, lane: _Lane) -> None:
        try:
            while lane.queue:
                async with self._lane_slots:
                    take = min(len(lane.queue), self._max)
                    lane.current = [lane.queue.popleft() for _ in range(take)]
                    await self._process(lane.current, skip_locked=False)
                    lane.current = []
        finally:
            # No await between the last look at the queue and this: a bid submitted from now
            # on finds no lane and goes to the writer.
            if self._lanes.get(lot_id) is lane:
                del self._lanes[lot_id]

    async def _process(self, batch: list[_Job], *, skip_locked: bool) -> None:
        if skip_locked:
            # The writer's bids on a lot that has a lane (queued before the lane opened, or
            # re-run one by one after a failed batch) join the lane: deciding them here, in
            # another transaction, would overtake the lane's earlier bids of the same lot.
            laned = [j for j in batch if j.request.lot_id in self._lanes]
            for job in laned:
                self._lanes[job.request.lot_id].queue.append(job)
            if laned:
                batch = [j for j in batch if j.request.lot_id not in self._lanes]
        live = [j for j in batch if not j.future.done()]
        self._waiting -= len(batch) - len(live)
        if not live:
            return
        self.batches += 1
        self.requests += len(live)
        try:
            outcomes = await _run_with_retries(
                self._db, [j.request for j in live], skip_locked=skip_locked
            )
        except Exception as exc:  # noqa: BLE001 - isolated below, then re-raised per request
            if transient(exc) or isinstance(exc, PoolTimeout):
                # The database stayed busy through every retry (or gave no connection in time):
                # re-running each bid alone would only repeat that, bid by bid. Say so to every
                # waiter (503).
                log.warning("bids.batch_gave_up", size=len(live), error=type(exc).__name__)
                busy = BidsBusy(
                    "the database stayed busy; retry with the same Idempotency-Key shortly"
                )
                for job in live:
                    self._waiting -= 1
                    if not job.future.done():
                        job.future.set_exception(busy)
                return
            if len(live) == 1:
                self._waiting -= 1
                if not live[0].future.done():
                    live[0].future.set_exception(exc)
                return
            log.warning("bids.batch_failed_isolating", size=len(live), error=type(exc).__name__)
            for job in live:
                await self._process([job], skip_locked=skip_locked)
            return
        for job, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, LotBusy):
                self._to_lane(job)  # still waiting: counted until its lane answers it
            else:
                self._answer(job, outcome)

    def _answer(self, job: _Job, outcome: Outcome) -> None:
        self._waiting -= 1
        if not job.future.done():
            job.future.set_result(outcome)


@dataclass(slots=True)
class _Lane:
    queue: collections.deque[_Job] = field(default_factory=collections.deque)
    current: list[_Job] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
