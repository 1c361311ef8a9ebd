"""The ledger's rules as pure code: accounts, transfers, holds, and the engine that applies a
request of transfers to a working snapshot (TigerBeetle's semantics, adapted; ADR 0003).

No I/O and no clock here. ``storage`` loads a snapshot with the touched accounts locked,
:func:`apply_request` decides one result per transfer and mutates the snapshot, and ``storage``
writes what changed. Because every check runs against the snapshot before anything is written,
a request never leaves a partial write behind.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

__all__ = [
    "ACCOUNT_ID_PATTERN",
    "CODE_PATTERN",
    "MAX_BATCH",
    "RESERVED_PREFIXES",
    "AccountFlag",
    "AccountInput",
    "AccountState",
    "Balances",
    "Hold",
    "HoldState",
    "LedgerInvariantError",
    "Snapshot",
    "TransferFlag",
    "TransferInput",
    "TransferRecord",
    "account_result",
    "apply_request",
    "expire_due_holds",
    "is_reserved",
]

MAX_BATCH = 8_190
MAX_AMOUNT = 2**53 - 1
_MAX_BALANCE = 2**63 - 1
ACCOUNT_ID_PATTERN = re.compile(r"^[A-Za-z0-9:_.-]{1,128}$")
CODE_PATTERN = re.compile(r"^[a-z0-9_.]{1,32}$")
RESERVED_PREFIXES = ("escrow:", "seller:", "gateway:", "deposit:", "platform:")


class LedgerInvariantError(RuntimeError):
    """A broken invariant: a bug, never a client error. Not stripped by ``python -O``."""


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise LedgerInvariantError(message)


class AccountFlag(enum.IntFlag):
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2
    CLOSED = 4


class TransferFlag(enum.IntFlag):
    LINKED = 1
    PENDING = 2
    POST_PENDING = 4
    VOID_PENDING = 8
    BALANCING_DEBIT = 16
    BALANCING_CREDIT = 32


_NO_FLAGS = TransferFlag(0)
_TWO_PHASE = TransferFlag.PENDING | TransferFlag.POST_PENDING | TransferFlag.VOID_PENDING
_RESOLVE = TransferFlag.POST_PENDING | TransferFlag.VOID_PENDING
_BALANCING = TransferFlag.BALANCING_DEBIT | TransferFlag.BALANCING_CREDIT


def flag_names(flags: enum.IntFlag) -> list[str]:
    return [f.name.lower() for f in type(flags) if f in flags and f.name]


def is_reserved(account_id: str) -> bool:
    """Accounts owned by a domain (escrow, payments, auctions) move only through its services."""
    return account_id.startswith(RESERVED_PREFIXES)


class HoldState(enum.StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Balances:
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    def __post_init__(self) -> None:
        for value in (
            self.debits_pending,
            self.debits_posted,
            self.credits_pending,
            self.credits_posted,
        ):
            ensure(0 <= value <= _MAX_BALANCE, f"balance out of range: {self}")

    def add(
        self,
        *,
        debits_pending: int = 0,
        debits_posted: int = 0,
        credits_pending: int = 0,
        credits_posted: int = 0,
    ) -> Balances:
        return Balances(
            self.debits_pending + debits_pending,
            self.debits_posted + debits_posted,
            self.credits_pending + credits_pending,
            self.credits_posted + credits_posted,
        )


@dataclass(frozen=True, slots=True)
class AccountInput:
    id: str
    currency: str
    code: str
    flags: AccountFlag
    metadata: str  # canonical JSON text ("{}" when none)


@dataclass(frozen=True, slots=True)
class AccountState:
    id: str
    currency: str
    code: str
    flags: AccountFlag
    metadata: str
    balances: Balances

    def debits_exceed_credits(self, extra: int) -> bool:
        b = self.balances
        return b.debits_pending + b.debits_posted + extra > b.credits_posted

    def credits_exceed_debits(self, extra: int) -> bool:
        b = self.balances
        return b.credits_pending + b.credits_posted + extra > b.debits_posted


def account_result(existing: AccountState | None, new: AccountInput, reserved: bool) -> str:
    """The result for creating ``new`` when ``existing`` (same id) may already be there."""
    if reserved:
        return "account_reserved"
    if existing is None:
        return "ok"
    if existing.currency != new.currency:
        return "exists_with_different_currency"
    if existing.code != new.code:
        return "exists_with_different_code"
    if existing.flags != new.flags:
        return "exists_with_different_flags"
    if existing.metadata != new.metadata:
        return "exists_with_different_metadata"
    return "exists"


@dataclass(frozen=True, slots=True)
class TransferInput:
    """A transfer as the client asked for it. ``None`` means "not given"."""

    id: str
    debit_account_id: str | None
    credit_account_id: str | None
    amount: int | None
    currency: str | None
    code: str | None
    flags: TransferFlag = _NO_FLAGS
    pending_id: str | None = None
    timeout_s: int = 0
    metadata: str = "{}"


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A transfer as written: immutable. ``requested_*`` keep what the client sent."""

    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    requested_amount: int | None
    currency: str
    code: str
    requested_code: str | None
    flags: TransferFlag
    pending_id: str | None
    timeout_s: int
    metadata: str
    timestamp_us: int
    expires_us: int | None
    debit_after: Balances
    credit_after: Balances


@dataclass(frozen=True, slots=True)
class Hold:
    transfer_id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    expires_us: int | None
    state: HoldState
    resolved_us: int | None = None

    def due(self, now_us: int) -> bool:
        return (
            self.state is HoldState.PENDING
            and self.expires_us is not None
            and self.expires_us <= now_us
        )


@dataclass(slots=True)
class Snapshot:
    """What one request (or one group-commit batch) may read and change.

    ``accounts`` holds every account a transfer names that exists (and the accounts of the
    holds below); ``transfers`` the stored transfers whose ids the batch uses (as ids or as
    ``pending_id``); ``holds`` every hold those reference plus every due hold touching one of
    those accounts. Changes are collected in the ``new_*``/``changed_*`` fields for storage to
    write.
    """

    now_us: int
    accounts: dict[str, AccountState]
    transfers: dict[str, TransferRecord]
    holds: dict[str, Hold]
    new_transfers: list[TransferRecord] = field(default_factory=list)
    new_holds: dict[str, Hold] = field(default_factory=dict)
    changed_holds: dict[str, Hold] = field(default_factory=dict)
    touched_accounts: set[str] = field(default_factory=set)

    def set_account(self, account: AccountState) -> None:
        self.accounts[account.id] = account
        self.touched_accounts.add(account.id)

    def set_hold(self, hold: Hold, *, new: bool = False) -> None:
        self.holds[hold.transfer_id] = hold
        if new or hold.transfer_id in self.new_holds:
            self.new_holds[hold.transfer_id] = hold
        else:
            self.changed_holds[hold.transfer_id] = hold


def expire_due_holds(snapshot: Snapshot, locked: Iterable[str] | None = None) -> list[Hold]:
    """Release every due hold whose two accounts are in the snapshot; returns the expired ones.

    Run at the start of each batch, so an expired hold never counts against a limit and never
    posts, even before the sweeper has visited it.
    """
    allowed = set(locked) if locked is not None else set(snapshot.accounts)
    expired = []
    for hold in sorted(snapshot.holds.values(), key=lambda h: (h.expires_us or 0, h.transfer_id)):
        if not hold.due(snapshot.now_us):
            continue
        if hold.debit_account_id not in allowed or hold.credit_account_id not in allowed:
            continue
        _release_pending(snapshot, hold)
        done = replace(hold, state=HoldState.EXPIRED, resolved_us=snapshot.now_us)
        snapshot.set_hold(done)
        expired.append(done)
    return expired


def _release_pending(snapshot: Snapshot, hold: Hold) -> None:
    dr = snapshot.accounts[hold.debit_account_id]
    cr = snapshot.accounts[hold.credit_account_id]
    snapshot.set_account(replace(dr, balances=dr.balances.add(debits_pending=-hold.amount)))
    snapshot.set_account(replace(cr, balances=cr.balances.add(credits_pending=-hold.amount)))


# --- applying one request ---------------------------------------------------------------


@dataclass(slots=True)
class _Undo:
    accounts: dict[str, AccountState] = field(default_factory=dict)
    holds: dict[str, Hold | None] = field(default_factory=dict)
    new_holds: dict[str, Hold | None] = field(default_factory=dict)
    changed_holds: dict[str, Hold | None] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    transfers_len: int = 0
    transfer_ids: list[str] = field(default_factory=list)


class _Tracking:
    """Records the pre-image of everything a linked chain changes, to roll it back."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.s = snapshot
        self.undo = _Undo(
            touched=set(snapshot.touched_accounts),
            transfers_len=len(snapshot.new_transfers),
        )

    def set_account(self, account: AccountState) -> None:
        self.undo.accounts.setdefault(account.id, self.s.accounts[account.id])
        self.s.set_account(account)

    def set_hold(self, hold: Hold, *, new: bool = False) -> None:
        tid = hold.transfer_id
        self.undo.holds.setdefault(tid, self.s.holds.get(tid))
        self.undo.new_holds.setdefault(tid, self.s.new_holds.get(tid))
        self.undo.changed_holds.setdefault(tid, self.s.changed_holds.get(tid))
        self.s.set_hold(hold, new=new)

    def add_transfer(self, record: TransferRecord) -> None:
        self.s.new_transfers.append(record)
        self.s.transfers[record.id] = record
        self.undo.transfer_ids.append(record.id)

    def rollback(self) -> None:
        u, s = self.undo, self.s
        s.accounts.update(u.accounts)
        for store, pre in ((s.holds, u.holds), (s.new_holds, u.new_holds)):
            for tid, old in pre.items():
                if old is None:
                    store.pop(tid, None)
                else:
                    store[tid] = old
        for tid, old in u.changed_holds.items():
            if old is None:
                s.changed_holds.pop(tid, None)
            else:
                s.changed_holds[tid] = old
        for tid in u.transfer_ids:
            s.transfers.pop(tid, None)
        del s.new_transfers[u.transfers_len :]
        s.touched_accounts.clear()
        s.touched_accounts.update(u.touched)


def _chains(transfers: Sequence[TransferInput]) -> list[list[int]]:
    chains: list[list[int]] = []
    current: list[int] = []
    for i, t in enumerate(transfers):
        current.append(i)
        if TransferFlag.LINKED not in t.flags:
            chains.append(current)
            current = []
    if current:
        chains.append(current)
    return chains


def apply_request(
    snapshot: Snapshot,
    transfers: Sequence[TransferInput],
    *,
    reserved: Callable[[str], bool] = lambda _id: False,
) -> list[str]:
    """One result per transfer, in request order; the snapshot holds the accepted changes.

    Linked chains are atomic. A chain whose every member already ``exists`` (a retry of a
    committed chain) answers ``exists`` for each; otherwise an ``exists`` member fails the chain
    like any other failure (TigerBeetle's rule), so a chain never half-applies.
    """
    results = [""] * len(transfers)
    last = len(transfers) - 1
    for chain in _chains(transfers):
        tracking = _Tracking(snapshot)
        outcome: dict[int, str] = {}
        failed: int | None = None
        for i in chain:
            if i == last and TransferFlag.LINKED in transfers[i].flags:
                outcome[i] = "linked_event_chain_open"
            else:
                outcome[i] = _apply_one(snapshot, tracking, transfers[i], reserved)
            if outcome[i] not in ("ok", "exists"):
                failed = i
                break
        if failed is None and len(chain) > 1 and "ok" in outcome.values():
            # Never half new: a member that existed before the chain fails a chain that also
            # creates. A repeat of a member created earlier in this same chain does not (its
            # `exists` must not outlive a rollback that would erase what it refers to).
            created = set(tracking.undo.transfer_ids)
            failed = next(
                (i for i in chain if outcome[i] == "exists" and transfers[i].id not in created),
                None,
            )
        if failed is None:
            for i in chain:
                results[i] = outcome[i]
            continue
        tracking.rollback()
        for i in chain:
            results[i] = outcome[i] if i == failed else "linked_event_failed"
    return results


def _apply_one(
    s: Snapshot, tr: _Tracking, t: TransferInput, reserved: Callable[[str], bool]
) -> str:
    existing = s.transfers.get(t.id)
    if existing is not None:
        return _exists_result(existing, t)
    result = _check_shape(t)
    if result:
        return result
    if t.flags & _RESOLVE:
        return _resolve_pending(s, tr, t, reserved)
    return _create(s, tr, t, reserved)


def _exists_result(e: TransferRecord, t: TransferInput) -> str:
    if e.flags != t.flags:
        return "exists_with_different_flags"
    if e.pending_id != t.pending_id:
        return "exists_with_different_pending_id"
    if e.timeout_s != t.timeout_s:
        return "exists_with_different_timeout_s"
    resolving = bool(t.flags & _RESOLVE)
    if t.debit_account_id != e.debit_account_id and not (resolving and t.debit_account_id is None):
        return "exists_with_different_debit_account_id"
    if t.credit_account_id != e.credit_account_id and not (
        resolving and t.credit_account_id is None
    ):
        return "exists_with_different_credit_account_id"
    if t.amount != e.requested_amount:
        return "exists_with_different_amount"
    if t.currency != e.currency and not (resolving and t.currency is None):
        return "exists_with_different_currency"
    if t.code != e.requested_code:
        return "exists_with_different_code"
    if t.metadata != e.metadata:
        return "exists_with_different_metadata"
    return "exists"


def _check_shape(t: TransferInput) -> str:
    two_phase = t.flags & _TWO_PHASE
    if (two_phase and (two_phase & (two_phase - 1))) or (
        t.flags & _BALANCING and t.flags & _RESOLVE
    ):
        return "flags_are_mutually_exclusive"
    if (
        t.debit_account_id is not None
        and t.credit_account_id is not None
        and t.debit_account_id == t.credit_account_id
    ):
        return "accounts_must_be_different"
    resolving = bool(t.flags & _RESOLVE)
    if t.pending_id is not None and not resolving:
        return "pending_id_must_be_empty"
    if resolving and t.pending_id is None:
        return "pending_id_required"
    if t.timeout_s != 0 and TransferFlag.PENDING not in t.flags:
        return "timeout_reserved_for_pending_transfer"
    if t.amount == 0:
        return "amount_must_not_be_zero"
    return ""


def _create(s: Snapshot, tr: _Tracking, t: TransferInput, reserved: Callable[[str], bool]) -> str:
    if t.debit_account_id is None or t.debit_account_id not in s.accounts:
        return "debit_account_not_found"
    if t.credit_account_id is None or t.credit_account_id not in s.accounts:
        return "credit_account_not_found"
    if reserved(t.debit_account_id) or reserved(t.credit_account_id):
        return "account_reserved"
    dr, cr = s.accounts[t.debit_account_id], s.accounts[t.credit_account_id]
    if t.currency is None or t.currency != dr.currency or t.currency != cr.currency:
        return "currency_mismatch"
    if AccountFlag.CLOSED in dr.flags:
        return "debit_account_closed"
    if AccountFlag.CLOSED in cr.flags:
        return "credit_account_closed"
    ensure(t.amount is not None and t.code is not None, "amount and code are required here")
    amount = t.amount or 0
    code = t.code or ""
    if TransferFlag.BALANCING_DEBIT in t.flags:
        b = dr.balances
        amount = min(amount, b.credits_posted - b.debits_pending - b.debits_posted)
        if amount <= 0:
            return "exceeds_credits"
    if TransferFlag.BALANCING_CREDIT in t.flags:
        b = cr.balances
        amount = min(amount, b.debits_posted - b.credits_pending - b.credits_posted)
        if amount <= 0:
            return "exceeds_debits"
    if AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS in dr.flags and dr.debits_exceed_credits(amount):
        return "exceeds_credits"
    if AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS in cr.flags and cr.credits_exceed_debits(amount):
        return "exceeds_debits"
    pending = TransferFlag.PENDING in t.flags
    if pending:
        dr_after = dr.balances.add(debits_pending=amount)
        cr_after = cr.balances.add(credits_pending=amount)
    else:
        dr_after = dr.balances.add(debits_posted=amount)
        cr_after = cr.balances.add(credits_posted=amount)
    tr.set_account(replace(dr, balances=dr_after))
    tr.set_account(replace(cr, balances=cr_after))
    expires_us = s.now_us + t.timeout_s * 1_000_000 if pending and t.timeout_s else None
    record = TransferRecord(
        id=t.id,
        debit_account_id=dr.id,
        credit_account_id=cr.id,
        amount=amount,
        requested_amount=t.amount,
        currency=t.currency,
        code=code,
        requested_code=code,
        flags=t.flags,
        pending_id=None,
        timeout_s=t.timeout_s,
        metadata=t.metadata,
        timestamp_us=s.now_us,
        expires_us=expires_us,
        debit_after=dr_after,
        credit_after=cr_after,
    )
    tr.add_transfer(record)
    if pending:
        hold = Hold(t.id, dr.id, cr.id, amount, expires_us, HoldState.PENDING)
        tr.set_hold(hold, new=True)
    return "ok"


def _resolve_pending(
    s: Snapshot, tr: _Tracking, t: TransferInput, reserved: Callable[[str], bool]
) -> str:
    if t.debit_account_id is not None and t.debit_account_id not in s.accounts:
        return "debit_account_not_found"
    if t.credit_account_id is not None and t.credit_account_id not in s.accounts:
        return "credit_account_not_found"
    pending = s.transfers.get(t.pending_id or "")
    hold = s.holds.get(t.pending_id or "")
    if pending is not None and (
        reserved(pending.debit_account_id) or reserved(pending.credit_account_id)
    ):
        return "account_reserved"
    if t.debit_account_id is not None and reserved(t.debit_account_id):
        return "account_reserved"
    if t.credit_account_id is not None and reserved(t.credit_account_id):
        return "account_reserved"
    if pending is not None and t.currency is not None and t.currency != pending.currency:
        return "currency_mismatch"
    if pending is None:
        return "pending_transfer_not_found"
    if TransferFlag.PENDING not in pending.flags or hold is None:
        return "pending_transfer_not_pending"
    if (t.debit_account_id not in (None, pending.debit_account_id)) or (
        t.credit_account_id not in (None, pending.credit_account_id)
    ):
        return "pending_transfer_has_different_accounts"
    posting = TransferFlag.POST_PENDING in t.flags
    amount = hold.amount if t.amount is None else t.amount
    if posting and amount > hold.amount:
        return "exceeds_pending_transfer_amount"
    if not posting and amount != hold.amount:
        return "pending_transfer_has_different_amount"
    if hold.state is HoldState.POSTED:
        return "pending_transfer_already_posted"
    if hold.state is HoldState.VOIDED:
        return "pending_transfer_already_voided"
    if hold.state is HoldState.EXPIRED or hold.due(s.now_us):
        return "pending_transfer_expired"
    dr, cr = s.accounts[pending.debit_account_id], s.accounts[pending.credit_account_id]
    if posting and AccountFlag.CLOSED in dr.flags:
        return "debit_account_closed"
    if posting and AccountFlag.CLOSED in cr.flags:
        return "credit_account_closed"
    posted = amount if posting else 0
    dr_after = dr.balances.add(debits_pending=-hold.amount, debits_posted=posted)
    cr_after = cr.balances.add(credits_pending=-hold.amount, credits_posted=posted)
    tr.set_account(replace(dr, balances=dr_after))
    tr.set_account(replace(cr, balances=cr_after))
    state = HoldState.POSTED if posting else HoldState.VOIDED
    tr.set_hold(replace(hold, state=state, resolved_us=s.now_us))
    tr.add_transfer(
        TransferRecord(
            id=t.id,
            debit_account_id=dr.id,
            credit_account_id=cr.id,
            amount=amount,
            requested_amount=t.amount,
            currency=pending.currency,
            code=t.code or pending.code,
            requested_code=t.code,
            flags=t.flags,
            pending_id=pending.id,
            timeout_s=0,
            metadata=t.metadata,
            timestamp_us=s.now_us,
            expires_us=None,
            debit_after=dr_after,
            credit_after=cr_after,
        )
    )
    return "ok"
