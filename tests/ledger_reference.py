"""A pure, in-memory reference model of the ledger, written from issue 3's spec.

It shares only the input types and flag enums with ``hammerlock.ledger.model`` — none of its
logic — so a differential test (``tests/integration/test_ledger_stateful.py``) can hold the real
service against it. It is deliberately naive: a linked chain is applied to copies of the state and
kept or thrown away whole; every result is the first rule of the spec's list that applies.

Time: the model expires holds *eagerly* (when the clock passes ``timestamp + timeout``), which is
what every result must reflect. The database releases an expired hold's pending balances lazily
(when a batch names one of its accounts or posts or voids a hold on one, or when the sweeper
runs), so the model also tracks which expired holds the database may not have released yet
(``unreleased``) to predict the stored balances exactly: :meth:`ReferenceLedger.stored_balances`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from hammerlock.ledger.model import AccountFlag, AccountInput, TransferFlag, TransferInput

__all__ = ["RefAccount", "RefHold", "RefTransfer", "ReferenceLedger"]

RESERVED = ("escrow:", "seller:", "gateway:", "deposit:", "platform:")

LINKED = TransferFlag.LINKED
PENDING = TransferFlag.PENDING
POST = TransferFlag.POST_PENDING
VOID = TransferFlag.VOID_PENDING
BAL_DEBIT = TransferFlag.BALANCING_DEBIT
BAL_CREDIT = TransferFlag.BALANCING_CREDIT
OK_LIKE = ("ok", "exists")


def _reserved(account_id: str | None) -> bool:
    return account_id is not None and account_id.startswith(RESERVED)


@dataclass
class RefAccount:
    id: str
    currency: str
    code: str
    flags: AccountFlag
    metadata: str
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    @property
    def closed(self) -> bool:
        return AccountFlag.CLOSED in self.flags

    def balances(self) -> tuple[int, int, int, int]:
        return (self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted)

    def within_limits(self) -> bool:
        if AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS in self.flags and (
            self.debits_pending + self.debits_posted > self.credits_posted
        ):
            return False
        return not (
            AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS in self.flags
            and self.credits_pending + self.credits_posted > self.debits_posted
        )


@dataclass(frozen=True)
class RefTransfer:
    sent: TransferInput  # exactly what the client sent (for the exists_* comparisons)
    debit: str
    credit: str
    amount: int  # what moved (or was held, or was released by a void)
    currency: str


@dataclass
class RefHold:
    id: str
    debit: str
    credit: str
    amount: int
    expires_us: int | None
    state: str = "pending"  # pending | posted | voided | expired


@dataclass
class ReferenceLedger:
    now_us: int
    accounts: dict[str, RefAccount] = field(default_factory=dict)
    transfers: dict[str, RefTransfer] = field(default_factory=dict)
    holds: dict[str, RefHold] = field(default_factory=dict)
    unreleased: set[str] = field(default_factory=set)

    # --- time ---------------------------------------------------------------------------------

    def advance(self, us: int) -> None:
        """Move the ledger clock; holds that reach their expiry expire now (eagerly)."""
        self.now_us += us
        for hold in sorted(self.holds.values(), key=lambda h: h.id):
            due = hold.expires_us is not None and hold.expires_us <= self.now_us
            if hold.state == "pending" and due:
                self._release(hold)
                hold.state = "expired"
                self.unreleased.add(hold.id)

    def open_holds(self) -> list[str]:
        return sorted(h.id for h in self.holds.values() if h.state == "pending")

    def next_expiry_us(self) -> int | None:
        due = [h.expires_us for h in self.holds.values() if h.state == "pending" and h.expires_us]
        return min(due, default=None)

    def sweep(self) -> set[str]:
        """The holds the sweeper must release: every expired one the database still holds."""
        swept, self.unreleased = self.unreleased, set()
        return swept

    # --- accounts -----------------------------------------------------------------------------

    def create_accounts(self, new: Sequence[AccountInput], *, public: bool) -> list[str]:
        results = []
        for a in new:
            result = self._account_result(a, public=public)
            if result == "ok":
                self.accounts[a.id] = RefAccount(a.id, a.currency, a.code, a.flags, a.metadata)
            results.append(result)
        return results

    def _account_result(self, a: AccountInput, *, public: bool) -> str:
        if public and _reserved(a.id):
            return "account_reserved"
        old = self.accounts.get(a.id)
        if old is None:
            return "ok"
        for name in ("currency", "code", "flags", "metadata"):
            if getattr(old, name) != getattr(a, name):
                return f"exists_with_different_{name}"
        return "exists"

    def close_account(self, account_id: str) -> None:
        account = self.accounts[account_id]
        account.flags |= AccountFlag.CLOSED

    # --- balances as stored -------------------------------------------------------------------

    def stored_balances(self, account_id: str) -> tuple[int, int, int, int]:
        """The four balances the database should hold: the true ones plus the pending amounts
        of expired holds it has not released yet."""
        a = self.accounts[account_id]
        dp, cp = a.debits_pending, a.credits_pending
        for hold_id in self.unreleased:
            hold = self.holds[hold_id]
            if hold.debit == account_id:
                dp += hold.amount
            if hold.credit == account_id:
                cp += hold.amount
        return (dp, a.debits_posted, cp, a.credits_posted)

    # --- transfers ----------------------------------------------------------------------------

    def post(self, requests: Sequence[tuple[Sequence[TransferInput], bool]]) -> list[list[str]]:
        """Apply requests (``(transfers, public)``) in order, as one batch at ``now_us``."""
        decided = self._decided_accounts([t for ts, _ in requests for t in ts])
        results = [self._request(transfers, public=public) for transfers, public in requests]
        # The batch released every expired hold touching an account it decided on, and every
        # expired hold it posts or voids.
        self.unreleased = {
            h
            for h in self.unreleased
            if self.holds[h].debit not in decided
            and self.holds[h].credit not in decided
            and f"hold:{h}" not in decided
        }
        return results

    def _decided_accounts(self, transfers: Sequence[TransferInput]) -> set[str]:
        """The accounts whose balances a batch decides on — those with a limit that it names or
        that a hold it posts or voids touches (as they stood before the batch), and a balancing
        transfer's balance-reading side — and the holds it posts or voids, as ``hold:{id}``.
        (An unconstrained account decides nothing: a batch does not release the expired holds
        touching it, ADR 0016; the sweeper does.)"""
        named: set[str] = set()
        for t in transfers:
            named |= {a for a in (t.debit_account_id, t.credit_account_id) if a is not None}
            hold = self.holds.get(t.pending_id or "")
            if hold is not None:
                named |= {hold.debit, hold.credit, f"hold:{t.pending_id}"}
        limits = (
            AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS
        )
        decided = {
            a
            for a in named
            if a.startswith("hold:") or (a in self.accounts and self.accounts[a].flags & limits)
        }
        for t in transfers:
            if BAL_DEBIT in t.flags and t.debit_account_id in self.accounts:
                decided.add(t.debit_account_id)
            if BAL_CREDIT in t.flags and t.credit_account_id in self.accounts:
                decided.add(t.credit_account_id)
        return decided

    def _request(self, transfers: Sequence[TransferInput], *, public: bool) -> list[str]:
        results: list[str] = []
        chain: list[int] = []
        for i, t in enumerate(transfers):
            chain.append(i)
            if LINKED not in t.flags or i == len(transfers) - 1:
                results += self._chain([transfers[j] for j in chain], public=public)
                chain = []
        return results

    def _chain(self, chain: list[TransferInput], *, public: bool) -> list[str]:
        saved = (
            copy.deepcopy(self.accounts),
            dict(self.transfers),
            copy.deepcopy(self.holds),
        )
        before = set(self.transfers)
        results: list[str] = []
        failed: int | None = None
        for k, t in enumerate(chain):
            if k == len(chain) - 1 and LINKED in t.flags:
                result = "linked_event_chain_open"  # the request ends inside the chain
            else:
                result = self._one(t, public=public)
            results.append(result)
            if result not in OK_LIKE:
                failed = k
                break
        if failed is None and "ok" in results:
            # A chain is all new or all there already (a retry); never half of each.
            old = [k for k, t in enumerate(chain) if results[k] == "exists" and t.id in before]
            failed = old[0] if old else None
        if failed is None:
            return results
        self.accounts, self.transfers, self.holds = saved
        return [results[k] if k == failed else "linked_event_failed" for k in range(len(chain))]

    def _one(self, t: TransferInput, *, public: bool) -> str:
        if t.id in self.transfers:
            return self._exists(self.transfers[t.id], t)
        shape = _shape(t)
        if shape:
            return shape
        if t.flags & (POST | VOID):
            return self._resolve(t, public=public)
        return self._create(t, public=public)

    @staticmethod
    def _exists(e: RefTransfer, t: TransferInput) -> str:
        s = e.sent
        resolving = bool(t.flags & (POST | VOID))

        def differs(given: str | None, stored: str) -> bool:
            # Posting or voiding may leave the accounts and currency out: "the pending's".
            return given != stored and not (resolving and given is None)

        checks = (
            ("flags", s.flags != t.flags),
            ("pending_id", s.pending_id != t.pending_id),
            ("timeout_s", s.timeout_s != t.timeout_s),
            ("debit_account_id", differs(t.debit_account_id, e.debit)),
            ("credit_account_id", differs(t.credit_account_id, e.credit)),
            ("amount", s.amount != t.amount),
            ("currency", differs(t.currency, e.currency)),
            ("code", s.code != t.code),
            ("metadata", s.metadata != t.metadata),
        )
        for name, different in checks:
            if different:
                return f"exists_with_different_{name}"
        return "exists"

    def _create(self, t: TransferInput, *, public: bool) -> str:
        dr = self.accounts.get(t.debit_account_id or "")
        cr = self.accounts.get(t.credit_account_id or "")
        if dr is None:
            return "debit_account_not_found"
        if cr is None:
            return "credit_account_not_found"
        if public and (_reserved(dr.id) or _reserved(cr.id)):
            return "account_reserved"
        if t.currency != dr.currency or t.currency != cr.currency:
            return "currency_mismatch"
        if dr.closed:
            return "debit_account_closed"
        if cr.closed:
            return "credit_account_closed"
        assert t.amount is not None
        assert t.currency is not None
        amount = t.amount
        if BAL_DEBIT in t.flags:
            amount = min(amount, dr.credits_posted - dr.debits_posted - dr.debits_pending)
            if amount <= 0:
                return "exceeds_credits"
        if BAL_CREDIT in t.flags:
            amount = min(amount, cr.debits_posted - cr.credits_posted - cr.credits_pending)
            if amount <= 0:
                return "exceeds_debits"
        if AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS in dr.flags and (
            dr.debits_pending + dr.debits_posted + amount > dr.credits_posted
        ):
            return "exceeds_credits"
        if AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS in cr.flags and (
            cr.credits_pending + cr.credits_posted + amount > cr.debits_posted
        ):
            return "exceeds_debits"
        if PENDING in t.flags:
            dr.debits_pending += amount
            cr.credits_pending += amount
            expires = self.now_us + t.timeout_s * 1_000_000 if t.timeout_s else None
            self.holds[t.id] = RefHold(t.id, dr.id, cr.id, amount, expires)
        else:
            dr.debits_posted += amount
            cr.credits_posted += amount
        self.transfers[t.id] = RefTransfer(t, dr.id, cr.id, amount, t.currency)
        return "ok"

    def _resolve(self, t: TransferInput, *, public: bool) -> str:
        if t.debit_account_id is not None and t.debit_account_id not in self.accounts:
            return "debit_account_not_found"
        if t.credit_account_id is not None and t.credit_account_id not in self.accounts:
            return "credit_account_not_found"
        p = self.transfers.get(t.pending_id or "")
        names = [t.debit_account_id, t.credit_account_id]
        if p is not None:
            names += [p.debit, p.credit]
        if public and any(_reserved(a) for a in names):
            return "account_reserved"
        if p is not None and t.currency is not None and t.currency != p.currency:
            return "currency_mismatch"
        if p is None:
            return "pending_transfer_not_found"
        if PENDING not in p.sent.flags:
            return "pending_transfer_not_pending"
        if t.debit_account_id not in (None, p.debit) or t.credit_account_id not in (None, p.credit):
            return "pending_transfer_has_different_accounts"
        hold = self.holds[p.sent.id]
        posting = POST in t.flags
        amount = hold.amount if t.amount is None else t.amount
        if posting and amount > hold.amount:
            return "exceeds_pending_transfer_amount"
        if not posting and amount != hold.amount:
            return "pending_transfer_has_different_amount"
        if hold.state == "posted":
            return "pending_transfer_already_posted"
        if hold.state == "voided":
            return "pending_transfer_already_voided"
        if hold.state == "expired":
            return "pending_transfer_expired"
        dr, cr = self.accounts[p.debit], self.accounts[p.credit]
        if posting and dr.closed:
            return "debit_account_closed"
        if posting and cr.closed:
            return "credit_account_closed"
        self._release(hold)
        if posting:
            dr.debits_posted += amount
            cr.credits_posted += amount
        hold.state = "posted" if posting else "voided"
        self.transfers[t.id] = RefTransfer(t, p.debit, p.credit, amount, p.currency)
        return "ok"

    def _release(self, hold: RefHold) -> None:
        self.accounts[hold.debit].debits_pending -= hold.amount
        self.accounts[hold.credit].credits_pending -= hold.amount


def _shape(t: TransferInput) -> str:
    """The checks that need nothing but the transfer itself, in the spec's order."""
    phases = [f for f in (PENDING, POST, VOID) if f in t.flags]
    resolving = bool(t.flags & (POST | VOID))
    if len(phases) > 1 or (resolving and t.flags & (BAL_DEBIT | BAL_CREDIT)):
        return "flags_are_mutually_exclusive"
    if t.debit_account_id is not None and t.debit_account_id == t.credit_account_id:
        return "accounts_must_be_different"
    if t.pending_id is not None and not resolving:
        return "pending_id_must_be_empty"
    if resolving and t.pending_id is None:
        return "pending_id_required"
    if t.timeout_s != 0 and PENDING not in t.flags:
        return "timeout_reserved_for_pending_transfer"
    if t.amount == 0:
        return "amount_must_not_be_zero"
    return ""
