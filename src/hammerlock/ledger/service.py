"""Ledger service functions, each inside a unit of work.

- :func:`post` applies transfers inside the *caller's* transaction: escrow and payments change
  their state and move money in one commit.
- :func:`post_requests` applies several independent requests in one transaction (the group
  commit used by :class:`hammerlock.ledger.writer.LedgerWriter`): one lock round, one INSERT of
  all transfers, one UPDATE per touched account.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hammerlock.audit import service as audit
from hammerlock.audit.model import Context
from hammerlock.db.uow import UnitOfWork
from hammerlock.ledger import storage
from hammerlock.ledger.errors import AccountNotFound, AccountReserved, TransferNotFound
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    AccountState,
    Balances,
    Hold,
    Snapshot,
    TransferInput,
    TransferRecord,
    account_result,
    apply_request,
    expire_due_holds,
    is_reserved,
)

__all__ = [
    "LedgerRequest",
    "close_account",
    "create_accounts",
    "get_account",
    "get_transfer",
    "post",
    "post_requests",
    "statement",
    "sweep_expired_holds",
]

_MAX_LOCK_ROUNDS = 4


@dataclass(frozen=True, slots=True)
class LedgerRequest:
    """One client request: its transfers, who sent it, whether domain accounts are off limits."""

    transfers: Sequence[TransferInput]
    ctx: Context | None
    public: bool = True


def _no_reservation(_account_id: str) -> bool:
    return False


def _transfers_digest(transfers: Sequence[TransferInput]) -> str:
    digest = hashlib.sha256()
    for t in transfers:
        digest.update(t.id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _accounts_of(holds: Iterable[Hold]) -> set[str]:
    return {a for h in holds for a in (h.debit_account_id, h.credit_account_id)}


async def _holds_in_reach(
    uow: UnitOfWork, named: set[str], pending_ids: set[str], now_us: int
) -> tuple[dict[str, Hold], set[str]]:
    """The holds a batch must see — those it posts or voids, and the due ones touching the
    accounts it decides on (to release them first) — and every account those holds touch."""
    holds = await storage.fetch_holds(uow, pending_ids)
    decided = named | _accounts_of(holds.values())
    holds.update(await storage.due_holds_touching(uow, decided, now_us))
    return holds, decided | _accounts_of(holds.values())


async def _load_snapshot(uow: UnitOfWork, transfers: Sequence[TransferInput]) -> Snapshot:
    """Lock every account the batch can touch, then read what it needs under those locks.

    All the locks are taken by one statement, in id order, so two batches (or a batch and the
    sweeper) never deadlock. Which accounts that is depends on holds read before locking (the
    ones named by ``pending_id``, and the due ones whose partner accounts must be locked too to
    release them); if the reads under the locks name an account more (a hold committed
    meanwhile), the locks are given back (rolling back a savepoint) and all taken again, in id
    order: locking the newcomer alone, out of order, is what deadlocks.
    """
    now_us = uow.clock.now_us()
    ids = {t.id for t in transfers}
    pending_ids = {t.pending_id for t in transfers if t.pending_id is not None}
    named = {a for t in transfers for a in (t.debit_account_id, t.credit_account_id) if a}
    wanted = named | (await _holds_in_reach(uow, named, pending_ids, now_us))[1]
    for attempt in range(1, _MAX_LOCK_ROUNDS + 1):
        last = attempt == _MAX_LOCK_ROUNDS
        savepoint = await uow.conn.begin_nested() if uow.is_postgres and not last else None
        locked = await storage.lock_accounts(uow, wanted)
        holds, needed = await _holds_in_reach(uow, named, pending_ids, now_us)
        if needed <= wanted or last:
            if savepoint is not None:
                await savepoint.commit()  # RELEASE SAVEPOINT: the locks stay taken
            break
        if savepoint is not None:
            await savepoint.rollback()  # gives the row locks back
        wanted |= needed
    if not needed <= wanted:
        # Still racing after every round: lock the newcomers out of order after all. PostgreSQL
        # may then report a deadlock, which run_with_retries retries.
        locked.update(await storage.lock_accounts(uow, needed - wanted))
    existing = await storage.fetch_transfers(uow, ids | pending_ids)
    return Snapshot(now_us=now_us, accounts=locked, transfers=existing, holds=holds)


async def post_requests(uow: UnitOfWork, requests: Sequence[LedgerRequest]) -> list[list[str]]:
    """Apply each request in order against one locked snapshot; results per request."""
    every = [t for r in requests for t in r.transfers]
    snapshot = await _load_snapshot(uow, every)
    before: dict[str, Balances] = {a.id: a.balances for a in snapshot.accounts.values()}
    expire_due_holds(snapshot)
    results: list[list[str]] = []
    events = []
    for request in requests:
        reserved: Callable[[str], bool] = is_reserved if request.public else _no_reservation
        outcome = apply_request(snapshot, request.transfers, reserved=reserved)
        results.append(outcome)
        if request.ctx is not None:
            events.append(
                request.ctx.event(
                    "ledger.transfers.create",
                    resource_type="ledger_transfer_batch",
                    resource_id=request.transfers[0].id if request.transfers else None,
                    ts_us=snapshot.now_us,
                    details={
                        "count": len(request.transfers),
                        "ok": sum(1 for r in outcome if r == "ok"),
                        "transfer_ids_sha256": _transfers_digest(request.transfers),
                    },
                )
            )
    # PostgreSQL: a request's one event goes inside its transfer INSERT (one round trip fewer).
    along = audit.outbox_insert(events[0]) if uow.is_postgres and len(events) == 1 else None
    if not await storage.write_changes(uow, snapshot, before, along=along):
        await audit.record_many(uow, events)
    return results


async def post(
    uow: UnitOfWork,
    transfers: Sequence[TransferInput],
    *,
    ctx: Context | None = None,
    public: bool = False,
) -> list[str]:
    """Apply ``transfers`` inside the caller's transaction; one result per transfer.

    Domain services call this with ``public=False`` (they own the reserved accounts) and record
    their own audit event; pass ``ctx`` to have the ledger record one as well.
    """
    [results] = await post_requests(uow, [LedgerRequest(transfers, ctx, public)])
    return results


@dataclass(frozen=True, slots=True)
class AccountResult:
    id: str
    result: str


async def create_accounts(
    uow: UnitOfWork, ctx: Context | None, new: Sequence[AccountInput], *, public: bool = True
) -> list[AccountResult]:
    existing = await storage.lock_accounts(uow, [a.id for a in new])
    results: list[AccountResult] = []
    to_insert: list[AccountInput] = []
    for a in new:
        prior = existing.get(a.id)
        result = account_result(prior, a, reserved=public and is_reserved(a.id))
        results.append(AccountResult(a.id, result))
        if result == "ok":
            to_insert.append(a)
            existing[a.id] = AccountState(a.id, a.currency, a.code, a.flags, a.metadata, Balances())
    now_us = uow.clock.now_us()
    inserted = await storage.insert_accounts(uow, to_insert, now_us)
    if lost := {a.id for a in to_insert} - inserted:
        # A concurrent request created some of them first: answer as if it had been earlier.
        winners = await storage.lock_accounts(uow, lost)
        results = [
            AccountResult(r.id, account_result(winners[a.id], a, reserved=False))
            if a.id in lost
            else r
            for a, r in zip(new, results, strict=True)
        ]
    if ctx is not None:
        await audit.record(
            uow,
            ctx.event(
                "ledger.accounts.create",
                resource_type="ledger_account_batch",
                resource_id=new[0].id if new else None,
                ts_us=now_us,
                details={"count": len(new), "created": len(inserted)},
            ),
        )
    return results


async def close_account(
    uow: UnitOfWork, ctx: Context, account_id: str, *, public: bool = True
) -> AccountState:
    if public and is_reserved(account_id):
        raise AccountReserved(f"account {account_id!r} is owned by a domain service")
    locked = await storage.lock_accounts(uow, [account_id])
    account = locked.get(account_id)
    if account is None:
        raise AccountNotFound(f"no ledger account {account_id!r}")
    closed = AccountState(
        account.id,
        account.currency,
        account.code,
        account.flags | AccountFlag.CLOSED,
        account.metadata,
        account.balances,
    )
    if closed.flags != account.flags:
        await storage.set_account_flags(uow, account_id, closed.flags)
    await audit.record(
        uow,
        ctx.event(
            "ledger.accounts.close",
            resource_type="ledger_account",
            resource_id=account_id,
            ts_us=uow.clock.now_us(),
            details={"already_closed": closed.flags == account.flags},
        ),
    )
    return closed


async def get_account(uow: UnitOfWork, account_id: str) -> AccountState:
    account = await storage.get_account(uow, account_id)
    if account is None:
        raise AccountNotFound(f"no ledger account {account_id!r}")
    return account


async def get_transfer(uow: UnitOfWork, transfer_id: str) -> TransferRecord:
    transfer = await storage.get_transfer(uow, transfer_id)
    if transfer is None:
        raise TransferNotFound(f"no ledger transfer {transfer_id!r}")
    return transfer


async def statement(
    uow: UnitOfWork, account_id: str, *, after_seq: int, limit: int
) -> list[tuple[int, TransferRecord]]:
    await get_account(uow, account_id)
    return await storage.statement(uow, account_id, after_seq=after_seq, limit=limit)


async def sweep_expired_holds(uow: UnitOfWork, *, limit: int = 1_000) -> list[Hold]:
    """Release due holds (the sweeper); lazy expiry at batch time covers the gap between runs."""
    now_us = uow.clock.now_us()
    due = await storage.due_holds(uow, now_us, limit)
    if not due:
        return []
    account_ids = {a for h in due for a in (h.debit_account_id, h.credit_account_id)}
    locked = await storage.lock_accounts(uow, account_ids)
    # Re-read under the locks: a hold may have been resolved meanwhile.
    holds = await storage.fetch_holds(uow, [h.transfer_id for h in due])
    snapshot = Snapshot(now_us=now_us, accounts=locked, transfers={}, holds=holds)
    before = {a.id: a.balances for a in locked.values()}
    expired = expire_due_holds(snapshot)
    await storage.write_changes(uow, snapshot, before)
    return expired
