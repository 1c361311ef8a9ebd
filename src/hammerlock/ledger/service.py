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
from dataclasses import dataclass, replace

from hammerlock.audit import service as audit
from hammerlock.audit.model import AuditEvent, Context
from hammerlock.db.uow import UnitOfWork
from hammerlock.ledger import storage
from hammerlock.ledger.errors import AccountNotFound, AccountReserved, TransferNotFound
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    AccountState,
    Balances,
    Hold,
    LedgerInvariantError,
    Snapshot,
    TransferFlag,
    TransferInput,
    TransferRecord,
    account_result,
    apply_request,
    expire_due_holds,
    is_reserved,
)
from hammerlock.ledger.storage import Lock

__all__ = [
    "Ensure",
    "LedgerRequest",
    "close_account",
    "create_accounts",
    "create_missing",
    "flush",
    "get_account",
    "get_transfer",
    "post",
    "post_requests",
    "statement",
    "sum_debited",
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


def _has_pending(account: AccountState) -> bool:
    b = account.balances
    return b.debits_pending != 0 or b.credits_pending != 0


def _accounts_of(holds: Iterable[Hold]) -> set[str]:
    return {a for h in holds for a in (h.debit_account_id, h.credit_account_id)}


_LIMITS = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS


def _limited(account: AccountState) -> bool:
    return bool(account.flags & _LIMITS)


def _balancing_sides(transfers: Sequence[TransferInput]) -> set[str]:
    """Accounts whose balance a balancing transfer reads (so they are locked like a limit)."""
    sides = set()
    for t in transfers:
        if TransferFlag.BALANCING_DEBIT in t.flags and t.debit_account_id:
            sides.add(t.debit_account_id)
        if TransferFlag.BALANCING_CREDIT in t.flags and t.credit_account_id:
            sides.add(t.credit_account_id)
    return sides


@dataclass(slots=True)
class _Loaded:
    snapshot: Snapshot
    locked: set[str]  # the accounts locked for writing now; the rest are written at commit


@dataclass(frozen=True, slots=True)
class Ensure:
    """Accounts a :func:`post` creates first where missing (as :func:`create_accounts` with
    ``public=False`` would), read with the batch's own accounts in its one share-locked read.
    ``what`` names them in the error raised when one cannot be had; ``check_existing``: an
    account that exists with other attributes is such an error too (else only a failed
    creation is)."""

    accounts: Sequence[AccountInput]
    what: str
    check_existing: bool = True


async def _ensure(
    uow: UnitOfWork, seen: dict[str, AccountState], ensure: Ensure, now_us: int
) -> None:
    """Create the accounts of ``ensure`` that the share-locked read ``seen`` did not find (and
    add them to it), as :func:`create_accounts` would; raise when one cannot be had."""
    results: list[AccountResult] = []
    to_insert: list[AccountInput] = []
    for a in ensure.accounts:
        prior = seen.get(a.id)
        result = account_result(prior, a, reserved=False)
        if result == "ok":
            to_insert.append(a)
        if prior is None or ensure.check_existing:
            results.append(AccountResult(a.id, result))
    inserted = await storage.insert_accounts(uow, to_insert, now_us)
    for a in to_insert:
        if a.id in inserted:
            seen[a.id] = AccountState(a.id, a.currency, a.code, a.flags, a.metadata, Balances())
    if lost := {a.id for a in to_insert} - inserted:
        # A concurrent request created some of them first: answer as if it had been earlier.
        winners = await storage.lock_accounts(uow, lost, Lock.SHARE)
        seen.update(winners)
        by_id = {a.id: a for a in to_insert}
        results = [
            AccountResult(r.id, account_result(winners[r.id], by_id[r.id], reserved=False))
            if r.id in lost
            else r
            for r in results
        ]
    bad = [r for r in results if r.result not in _ENSURED]
    if bad:
        raise LedgerInvariantError(f"{ensure.what}: {bad}")


_ENSURED = frozenset({"ok", "exists"})


async def _load_snapshot(
    uow: UnitOfWork, transfers: Sequence[TransferInput], ensure: Ensure | None = None
) -> _Loaded:
    """Read every account the batch can touch; lock for writing those whose balance decides.

    An account with a limit (or the balance-reading side of a balancing transfer) decides a
    transfer's result, so it is locked for writing now (FOR NO KEY UPDATE) and its balance read
    under the lock. An *unconstrained* account never decides a result: it is only read, with a
    share lock (FOR KEY SHARE: it cannot be closed meanwhile, but other transactions may move
    its balance), and its changes are written at commit (:func:`flush`). Hot accounts — the
    gateway, platform revenue — therefore do not serialise the transactions that touch them
    (ADR 0016).

    The write locks are taken by one statement, in id order, so two batches never deadlock
    (a batch with a balancing transfer whose read side has no limit locks all its unconstrained
    accounts when it reads them, in one statement after the holds: where every other batch
    locks those, at commit). Which limited accounts to lock depends on holds read before
    locking (the due ones touching a limited account must be released first, and their
    limited partner locked too); if the
    reads under the locks name a limited account more (a hold committed meanwhile), the locks
    are given back (rolling back a savepoint) and all taken again, in id order. The holds a
    batch resolves (by ``pending_id``) are locked themselves, so two resolutions of one hold
    take turns even between two unconstrained accounts.
    """
    now_us = uow.clock.now_us()
    ids = {t.id for t in transfers}
    pending_ids = {t.pending_id for t in transfers if t.pending_id is not None}
    named = {a for t in transfers for a in (t.debit_account_id, t.credit_account_id) if a}
    resolving = await storage.fetch_holds(uow, pending_ids)  # read again, locked, below
    named |= _accounts_of(resolving.values())
    if ensure is None:
        seen = await storage.lock_accounts(uow, named, Lock.SHARE)
    else:
        wanted_ids = {a.id for a in ensure.accounts}
        seen = await storage.lock_accounts(uow, named | wanted_ids, Lock.SHARE)
        await _ensure(uow, seen, ensure, now_us)
        for account_id in wanted_ids - named:  # read only to be ensured: not the batch's
            seen.pop(account_id, None)
    balancing = _balancing_sides(transfers) & seen.keys()
    decided = {a for a, acc in seen.items() if _limited(acc)} | balancing
    added: set[str] = set()  # accounts share-locked inside the current savepoint

    async def in_reach(lock: bool) -> tuple[dict[str, Hold], set[str]]:
        holds = await storage.fetch_holds(uow, pending_ids, lock=True) if lock else dict(resolving)
        # Every pending hold counts in both its accounts' pending totals (never zero: a
        # transfer of 0 is refused), written with the hold under the account's write lock. An
        # account read under that lock with nothing pending has no hold to expire: no query.
        # (Before locking, the share-locked read only guides which accounts to lock.)
        rows = locked if lock else seen
        maybe = {a for a in decided if a not in rows or _has_pending(rows[a])}
        if maybe:
            holds.update(await storage.due_holds_touching(uow, maybe, now_us))
        partners = _accounts_of(holds.values()) - seen.keys()
        if partners:
            seen.update(await storage.lock_accounts(uow, partners, Lock.SHARE))
            added.update(partners)
        touched = decided | _accounts_of(holds.values())
        return holds, {a for a in touched if a in seen and _limited(seen[a])}

    locked: dict[str, AccountState] = {}
    wanted = (await in_reach(False))[1]
    for attempt in range(1, _MAX_LOCK_ROUNDS + 1):
        last = attempt == _MAX_LOCK_ROUNDS
        savepoint = await uow.conn.begin_nested() if uow.is_postgres and not last else None
        added.clear()
        locked = await storage.lock_accounts(uow, wanted)
        holds, needed = await in_reach(True)
        if needed <= wanted or last:
            if savepoint is not None:
                await savepoint.commit()  # RELEASE SAVEPOINT: the locks stay taken
            break
        if savepoint is not None:
            await savepoint.rollback()  # gives the row locks back, share locks taken in it too
            for account_id in added:
                del seen[account_id]  # so the next round locks them again
        wanted |= needed
    if not needed <= wanted:
        # Still racing after every round: lock the newcomers out of order after all. PostgreSQL
        # may then report a deadlock, which run_with_retries retries.
        locked.update(await storage.lock_accounts(uow, needed - wanted))
    # A balancing transfer reads its side's balance, so an unconstrained side is locked for
    # writing now — and with it every unconstrained account this batch can touch, in one
    # statement in id order, after the limited accounts and the holds: where and how every
    # batch locks them (at commit), so no two batches take two of them in opposite orders.
    if balancing - locked.keys():
        late = {a for a, acc in seen.items() if not _limited(acc)} - locked.keys()
        locked.update(await storage.lock_accounts(uow, late))
    existing = await storage.fetch_transfers(uow, ids | pending_ids)
    snapshot = Snapshot(now_us=now_us, accounts={**seen, **locked}, transfers=existing, holds=holds)
    return _Loaded(snapshot, set(locked))


@dataclass(slots=True)
class _Pending:
    """A batch decided and not yet written: written by :func:`flush` before the commit."""

    snapshot: Snapshot
    before: dict[str, Balances]
    locked: set[str]
    events: list[AuditEvent]


_DEFERRED = "ledger"


async def flush(uow: UnitOfWork) -> None:
    """Write the transaction's decided-but-unwritten ledger batch, if any.

    Runs before the commit (a hook :func:`post_requests` registers) and before any other
    ledger call in the same transaction, so a transaction always reads its own transfers.
    Unconstrained accounts are locked for writing here, for the last statements of the
    transaction only; what other transactions moved on them since this batch read them shifts
    the balances recorded after each transfer, which stay exact.
    """
    pending: _Pending | None = uow.deferred.pop(_DEFERRED, None)
    if pending is None:
        return
    s = pending.snapshot
    shared = {a for a in s.touched_accounts if a not in pending.locked}
    if shared:
        now = await storage.lock_accounts(uow, shared)
        shift: dict[str, _Shift] = {}
        for account_id in shared:
            current, read = now[account_id], s.accounts[account_id]
            if AccountFlag.CLOSED in current.flags and AccountFlag.CLOSED not in read.flags:
                # Impossible while the share lock holds; never write past a close.
                raise LedgerInvariantError(f"account {account_id} closed under a share lock")
            moved = _minus(current.balances, pending.before[account_id])
            if any(moved):
                shift[account_id] = moved
        if shift:
            s.new_transfers = [_shifted(t, shift) for t in s.new_transfers]
    # PostgreSQL: a request's one event goes inside its transfer INSERT (one round trip fewer).
    events = pending.events
    along = audit.outbox_insert(events[0]) if uow.is_postgres and len(events) == 1 else None
    if not await storage.write_changes(uow, s, pending.before, along=along):
        await audit.record_many(uow, events)


_Shift = tuple[int, int, int, int]  # what others moved: pending/posted debits, credits (signed)


def _minus(a: Balances, b: Balances) -> _Shift:
    return (
        a.debits_pending - b.debits_pending,
        a.debits_posted - b.debits_posted,
        a.credits_pending - b.credits_pending,
        a.credits_posted - b.credits_posted,
    )


def _plus(a: Balances, d: _Shift | None) -> Balances:
    if d is None:
        return a
    return a.add(debits_pending=d[0], debits_posted=d[1], credits_pending=d[2], credits_posted=d[3])


def _shifted(t: TransferRecord, shift: dict[str, _Shift]) -> TransferRecord:
    dr, cr = shift.get(t.debit_account_id), shift.get(t.credit_account_id)
    if dr is None and cr is None:
        return t
    return replace(t, debit_after=_plus(t.debit_after, dr), credit_after=_plus(t.credit_after, cr))


async def post_requests(
    uow: UnitOfWork, requests: Sequence[LedgerRequest], *, ensure: Ensure | None = None
) -> list[list[str]]:
    """Apply each request in order against one snapshot; results per request.

    The results are final when this returns; the rows are written by :func:`flush` before the
    transaction commits (or by the next ledger call in it). ``ensure``: accounts created
    first where missing (:class:`Ensure`).
    """
    await flush(uow)
    every = [t for r in requests for t in r.transfers]
    loaded = await _load_snapshot(uow, every, ensure)
    snapshot = loaded.snapshot
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
    uow.deferred[_DEFERRED] = _Pending(snapshot, before, loaded.locked, events)
    uow.before_commit(_DEFERRED, flush)
    return results


async def post(
    uow: UnitOfWork,
    transfers: Sequence[TransferInput],
    *,
    ctx: Context | None = None,
    public: bool = False,
    ensure: Ensure | None = None,
) -> list[str]:
    """Apply ``transfers`` inside the caller's transaction; one result per transfer.

    Domain services call this with ``public=False`` (they own the reserved accounts) and record
    their own audit event; pass ``ctx`` to have the ledger record one as well. ``ensure``:
    accounts to create first where missing, read in the batch's own read (one statement
    instead of a :func:`create_accounts` before it).
    """
    [results] = await post_requests(uow, [LedgerRequest(transfers, ctx, public)], ensure=ensure)
    return results


@dataclass(frozen=True, slots=True)
class AccountResult:
    id: str
    result: str


async def create_accounts(
    uow: UnitOfWork, ctx: Context | None, new: Sequence[AccountInput], *, public: bool = True
) -> list[AccountResult]:
    await flush(uow)
    existing = await storage.lock_accounts(uow, [a.id for a in new], Lock.SHARE)
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
        winners = await storage.lock_accounts(uow, lost, Lock.SHARE)
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


async def create_missing(uow: UnitOfWork, new: Sequence[AccountInput]) -> list[AccountResult]:
    """:func:`create_accounts` (``public=False``, no audit event) of accounts a read just found
    missing: inserted without reading them first. One created meanwhile by a concurrent
    request is read back (share-locked) and answered as :func:`create_accounts` would."""
    await flush(uow)
    inserted = await storage.insert_accounts(uow, new, uow.clock.now_us())
    results = [AccountResult(a.id, "ok") for a in new]
    if lost := {a.id for a in new} - inserted:
        winners = await storage.lock_accounts(uow, lost, Lock.SHARE)
        results = [
            AccountResult(a.id, account_result(winners[a.id], a, reserved=False))
            if a.id in lost
            else r
            for a, r in zip(new, results, strict=True)
        ]
    return results


async def close_account(
    uow: UnitOfWork, ctx: Context, account_id: str, *, public: bool = True
) -> AccountState:
    if public and is_reserved(account_id):
        raise AccountReserved(f"account {account_id!r} is owned by a domain service")
    await flush(uow)
    # FOR UPDATE: waits for every transaction that read the account to post to it.
    locked = await storage.lock_accounts(uow, [account_id], Lock.CLOSE)
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
    await flush(uow)
    account = await storage.get_account(uow, account_id)
    if account is None:
        raise AccountNotFound(f"no ledger account {account_id!r}")
    return account


async def get_accounts(uow: UnitOfWork, account_ids: Iterable[str]) -> dict[str, AccountState]:
    """The accounts that exist among ``account_ids``, read in one statement without a lock."""
    await flush(uow)
    return await storage.lock_accounts(uow, account_ids, None)


async def get_transfer(uow: UnitOfWork, transfer_id: str) -> TransferRecord:
    await flush(uow)
    transfer = await storage.get_transfer(uow, transfer_id)
    if transfer is None:
        raise TransferNotFound(f"no ledger transfer {transfer_id!r}")
    return transfer


async def sum_debited(uow: UnitOfWork, account_id: str, *, code: str, id_prefix: str) -> int:
    """What the transfers out of ``account_id`` with ``code`` and an id starting with
    ``id_prefix`` moved, this transaction's own included."""
    await flush(uow)
    return await storage.sum_debited(uow, account_id, code=code, id_prefix=id_prefix)


async def statement(
    uow: UnitOfWork, account_id: str, *, after_seq: int, limit: int
) -> list[tuple[int, TransferRecord]]:
    await get_account(uow, account_id)
    return await storage.statement(uow, account_id, after_seq=after_seq, limit=limit)


async def sweep_expired_holds(uow: UnitOfWork, *, limit: int = 1_000) -> list[Hold]:
    """Release due holds (the sweeper); lazy expiry at batch time covers the gap between runs.

    Locks as a batch does (accounts with a limit now, the holds' rows, unconstrained accounts
    at commit), so the sweeper and the batches share one lock order.
    """
    await flush(uow)
    now_us = uow.clock.now_us()
    due = await storage.due_holds(uow, now_us, limit)
    if not due:
        return []
    seen = await storage.lock_accounts(uow, _accounts_of(due), Lock.SHARE)
    locked = await storage.lock_accounts(uow, {a for a, acc in seen.items() if _limited(acc)})
    # Re-read under the locks: a hold may have been resolved meanwhile.
    holds = await storage.fetch_holds(uow, [h.transfer_id for h in due], lock=True)
    snapshot = Snapshot(now_us=now_us, accounts={**seen, **locked}, transfers={}, holds=holds)
    before = {a.id: a.balances for a in snapshot.accounts.values()}
    expired = expire_due_holds(snapshot)
    uow.deferred[_DEFERRED] = _Pending(snapshot, before, set(locked), [])
    uow.before_commit(_DEFERRED, flush)
    return expired
