"""The pure ledger engine (hammerlock.ledger.model): every result code, their precedence,
linked chains, holds, expiry, limits and balancing, against a snapshot held in memory."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    AccountState,
    Balances,
    Hold,
    HoldState,
    LedgerInvariantError,
    Snapshot,
    TransferFlag,
    TransferInput,
    account_result,
    apply_request,
    expire_due_holds,
    is_reserved,
)

NOW = 1_767_225_600_000_000
S = 1_000_000  # one second in microseconds
NONE = TransferFlag(0)
LINKED = TransferFlag.LINKED
PENDING = TransferFlag.PENDING
POST = TransferFlag.POST_PENDING
VOID = TransferFlag.VOID_PENDING
BAL_DR = TransferFlag.BALANCING_DEBIT
BAL_CR = TransferFlag.BALANCING_CREDIT
DR_LIMIT = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS
CR_LIMIT = AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS
CLOSED = AccountFlag.CLOSED
NO_FLAGS = AccountFlag(0)


def acct(
    account_id: str,
    flags: AccountFlag = NO_FLAGS,
    *,
    currency: str = "USD",
    dp: int = 0,
    dpo: int = 0,
    cp: int = 0,
    cpo: int = 0,
) -> AccountState:
    return AccountState(account_id, currency, "wallet", flags, "{}", Balances(dp, dpo, cp, cpo))


def snap(*accounts: AccountState, now_us: int = NOW) -> Snapshot:
    """A snapshot with ``a`` and ``b`` (unlimited, USD) unless accounts are given."""
    accounts = accounts or (acct("a"), acct("b"))
    return Snapshot(now_us=now_us, accounts={a.id: a for a in accounts}, transfers={}, holds={})


def tr(
    transfer_id: str,
    debit: str | None = "a",
    credit: str | None = "b",
    amount: int | None = 10,
    *,
    currency: str | None = "USD",
    code: str | None = "pay",
    flags: TransferFlag = NONE,
    pending_id: str | None = None,
    timeout_s: int = 0,
    metadata: str = "{}",
) -> TransferInput:
    return TransferInput(
        transfer_id, debit, credit, amount, currency, code, flags, pending_id, timeout_s, metadata
    )


def resolve(
    flags: TransferFlag,
    transfer_id: str,
    pending_id: str | None,
    amount: int | None = None,
    *,
    debit: str | None = None,
    credit: str | None = None,
    currency: str | None = None,
    code: str | None = None,
    timeout_s: int = 0,
) -> TransferInput:
    """A post or void: what is left out comes from the hold."""
    return TransferInput(
        transfer_id, debit, credit, amount, currency, code, flags, pending_id, timeout_s
    )


def post(
    transfer_id: str, pending_id: str | None, amount: int | None = None, **kw: str
) -> TransferInput:
    return resolve(POST, transfer_id, pending_id, amount, **kw)


def void(
    transfer_id: str, pending_id: str | None, amount: int | None = None, **kw: str
) -> TransferInput:
    return resolve(VOID, transfer_id, pending_id, amount, **kw)


def apply(s: Snapshot, *transfers: TransferInput, public: bool = False) -> list[str]:
    return apply_request(s, transfers, reserved=is_reserved if public else lambda _id: False)


def one(s: Snapshot, t: TransferInput, *, public: bool = False) -> str:
    [result] = apply(s, t, public=public)
    return result


def bal(s: Snapshot, account_id: str) -> tuple[int, int, int, int]:
    b = s.accounts[account_id].balances
    return (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted)


def held(*accounts: AccountState, amount: int = 100, timeout_s: int = 0) -> Snapshot:
    """A snapshot where ``a`` holds ``amount`` for ``b`` (transfer ``p``)."""
    s = snap(*accounts)
    assert one(s, tr("p", amount=amount, flags=PENDING, timeout_s=timeout_s)) == "ok"
    return s


# --- plain transfers and records ---------------------------------------------------------------


def test_ok_moves_posted_balances_and_records_the_balances_after() -> None:
    s = snap()
    assert apply(s, tr("t1", amount=30), tr("t2", "b", "a", 5)) == ["ok", "ok"]
    assert bal(s, "a") == (0, 30, 0, 5)
    assert bal(s, "b") == (0, 5, 0, 30)
    first, second = s.new_transfers
    assert (first.id, first.amount, first.timestamp_us, first.expires_us) == ("t1", 30, NOW, None)
    assert first.debit_after == Balances(0, 30, 0, 0)
    assert first.credit_after == Balances(0, 0, 0, 30)
    assert second.debit_after == Balances(0, 5, 0, 30)  # b, after both
    assert s.touched_accounts == {"a", "b"}


def test_a_failed_transfer_changes_nothing() -> None:
    s = snap(acct("a", DR_LIMIT), acct("b"))
    assert one(s, tr("t1")) == "exceeds_credits"
    assert (s.new_transfers, s.new_holds, s.touched_accounts) == ([], {}, set())
    assert bal(s, "a") == (0, 0, 0, 0)


# --- every result code ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transfer", "expected"),
    [
        (tr("t", flags=PENDING | POST, pending_id="p"), "flags_are_mutually_exclusive"),
        (tr("t", flags=POST | VOID, pending_id="p"), "flags_are_mutually_exclusive"),
        (tr("t", flags=PENDING | VOID), "flags_are_mutually_exclusive"),
        (tr("t", flags=BAL_DR | POST, pending_id="p"), "flags_are_mutually_exclusive"),
        (tr("t", flags=BAL_CR | VOID, pending_id="p"), "flags_are_mutually_exclusive"),
        (tr("t", "a", "a"), "accounts_must_be_different"),
        (tr("t", pending_id="p"), "pending_id_must_be_empty"),
        (tr("t", flags=PENDING, pending_id="p"), "pending_id_must_be_empty"),
        (post("t", None), "pending_id_required"),
        (void("t", None), "pending_id_required"),
        (tr("t", timeout_s=5), "timeout_reserved_for_pending_transfer"),
        (resolve(POST, "t", "p", timeout_s=5), "timeout_reserved_for_pending_transfer"),
        (tr("t", amount=0), "amount_must_not_be_zero"),
        (post("t", "p", 0), "amount_must_not_be_zero"),
        (tr("t", "x"), "debit_account_not_found"),
        (tr("t", "a", "x"), "credit_account_not_found"),
        (post("t", "p", debit="x"), "debit_account_not_found"),
        (tr("t", currency="EUR"), "currency_mismatch"),
        (tr("t", "a", "eur"), "currency_mismatch"),
        (post("t", "x"), "pending_transfer_not_found"),
        (tr("t", flags=BAL_DR), "exceeds_credits"),
        (tr("t", flags=BAL_CR), "exceeds_debits"),
    ],
)
def test_transfer_shape_and_lookup_results(transfer: TransferInput, expected: str) -> None:
    s = snap(acct("a"), acct("b"), acct("eur", currency="EUR"))
    assert one(s, transfer) == expected
    assert s.new_transfers == []


def test_account_reserved_only_for_public_requests() -> None:
    s = snap(acct("a"), acct("escrow:1"))
    assert one(s, tr("t1", "a", "escrow:1"), public=True) == "account_reserved"
    assert one(s, tr("t1", "escrow:1", "a"), public=True) == "account_reserved"
    assert one(s, tr("t1", "a", "escrow:1"), public=False) == "ok"  # a domain service may
    assert one(s, tr("t2", "escrow:1", "a", flags=PENDING)) == "ok"
    # resolving a hold on a reserved account is reserved too, even without naming it
    assert one(s, post("t3", "t2"), public=True) == "account_reserved"
    assert one(s, post("t3", "t2", debit="a"), public=True) == "account_reserved"
    assert one(s, void("t3", "t2"), public=False) == "ok"


def test_closed_accounts_reject_transfers() -> None:
    s = snap(acct("a", CLOSED), acct("b"), acct("c", CLOSED))
    assert one(s, tr("t1", "a", "b")) == "debit_account_closed"
    assert one(s, tr("t1", "b", "c")) == "credit_account_closed"
    assert one(s, tr("t1", "b", "c", flags=PENDING)) == "credit_account_closed"


def test_limits_count_pending_amounts() -> None:
    s = snap(acct("w", DR_LIMIT, cpo=100), acct("b"), acct("pay", CR_LIMIT, dpo=50))
    assert one(s, tr("h1", "w", "b", 60, flags=PENDING)) == "ok"
    assert one(s, tr("t1", "w", "b", 41)) == "exceeds_credits"  # 60 held + 41 > 100
    assert one(s, tr("t1", "w", "b", 40)) == "ok"  # exactly at the limit
    assert one(s, tr("t2", "w", "b", 1, flags=PENDING)) == "exceeds_credits"
    assert one(s, void("v1", "h1")) == "ok"
    assert one(s, tr("t2", "w", "b", 60)) == "ok"
    assert bal(s, "w") == (0, 100, 0, 100)
    # the other direction: credits must not exceed debits, pending included
    assert one(s, tr("h2", "b", "pay", 30, flags=PENDING)) == "ok"
    assert one(s, tr("t3", "b", "pay", 21)) == "exceeds_debits"
    assert one(s, tr("t3", "b", "pay", 20)) == "ok"
    assert bal(s, "pay") == (0, 50, 30, 20)


# --- precedence: where two rules apply, the earlier one in the issue's list wins ----------------


@pytest.mark.parametrize(
    ("transfer", "expected"),
    [
        (tr("t", "a", "a", 0), "accounts_must_be_different"),  # over amount_must_not_be_zero
        (tr("t", "a", "a", flags=PENDING | POST), "flags_are_mutually_exclusive"),
        (tr("t", pending_id="p", timeout_s=3), "pending_id_must_be_empty"),
        (post("t", None, 0), "pending_id_required"),
        (tr("t", amount=0, timeout_s=3), "timeout_reserved_for_pending_transfer"),
        (tr("t", "x", "y", 0), "amount_must_not_be_zero"),  # over debit_account_not_found
        (tr("t", "x", "y"), "debit_account_not_found"),
        (tr("t", "a", "y", currency="EUR"), "credit_account_not_found"),
        (tr("t", "a", "escrow:1", currency="EUR"), "account_reserved"),  # over currency_mismatch
        (tr("t", "shut", "b", currency="EUR"), "currency_mismatch"),  # over debit_account_closed
        (tr("t", "shut", "shut2"), "debit_account_closed"),
        (tr("t", "lim", "shut", 1_000), "credit_account_closed"),  # over exceeds_credits
        (tr("t", "lim", "paylim", 1_000), "exceeds_credits"),  # over exceeds_debits
    ],
)
def test_precedence_of_shape_and_account_results(transfer: TransferInput, expected: str) -> None:
    s = snap(
        acct("a"),
        acct("b"),
        acct("escrow:1"),
        acct("shut", CLOSED),
        acct("shut2", CLOSED),
        acct("lim", DR_LIMIT),
        acct("paylim", CR_LIMIT),
    )
    assert one(s, transfer, public=True) == expected


def test_precedence_of_hold_results() -> None:
    s = snap(acct("a"), acct("b"), acct("c"), acct("d", CLOSED), acct("escrow:1"))
    assert apply(s, tr("p", amount=100, flags=PENDING, timeout_s=10), tr("plain")) == ["ok", "ok"]
    # account lookups and the reservation come before the hold is even looked at
    assert one(s, post("t", "nope", debit="x", credit="y")) == "debit_account_not_found"
    assert one(s, post("t", "nope", credit="y")) == "credit_account_not_found"
    assert one(s, post("t", "nope", debit="escrow:1"), public=True) == "account_reserved"
    assert one(s, post("t", "p", currency="EUR", debit="c")) == "currency_mismatch"
    assert one(s, post("t", "nope", currency="EUR")) == "pending_transfer_not_found"
    assert one(s, post("t", "plain", debit="c")) == "pending_transfer_not_pending"
    assert one(s, post("t", "p", 1_000, debit="c")) == "pending_transfer_has_different_accounts"
    assert one(s, post("t", "p", 1_000, credit="a")) == "pending_transfer_has_different_accounts"
    assert one(s, void("t", "p", 99)) == "pending_transfer_has_different_amount"
    assert one(s, post("t", "p", 40, debit="a", credit="b", currency="USD")) == "ok"
    # resolved: an amount error still comes before "already posted"
    assert one(s, post("t2", "p", 101)) == "exceeds_pending_transfer_amount"
    assert one(s, void("t2", "p", 99)) == "pending_transfer_has_different_amount"
    assert one(s, post("t2", "p")) == "pending_transfer_already_posted"
    s.now_us += 60 * S  # long past its expiry: "already posted" still comes first
    assert expire_due_holds(s) == []
    assert one(s, void("t2", "p")) == "pending_transfer_already_posted"


def test_expired_comes_before_closed() -> None:
    s = held(acct("a"), acct("b"), timeout_s=1)
    s.accounts["b"] = acct("b", CLOSED, cp=100)
    assert one(s, post("t", "p")) == "credit_account_closed"
    s.now_us += S
    assert one(s, post("t", "p")) == "pending_transfer_expired"


def test_exists_comes_before_every_check_of_the_new_body() -> None:
    s = snap()
    assert one(s, tr("t1")) == "ok"
    assert one(s, tr("t1", "a", "a", 0)) == "exists_with_different_credit_account_id"
    assert one(s, tr("t1", amount=0)) == "exists_with_different_amount"
    assert one(s, tr("t1", flags=PENDING | POST)) == "exists_with_different_flags"


# --- exists_with_different_* ------------------------------------------------------------------

_STORED = tr("h", amount=10, flags=PENDING, timeout_s=5, metadata='{"k":1}')
_CHANGES: list[tuple[str, dict[str, object]]] = [
    ("flags", {"flags": PENDING | BAL_DR}),
    ("pending_id", {"pending_id": "p"}),
    ("timeout_s", {"timeout_s": 6}),
    ("debit_account_id", {"debit_account_id": "c"}),
    ("credit_account_id", {"credit_account_id": "c"}),
    ("amount", {"amount": 11}),
    ("currency", {"currency": "EUR"}),
    ("code", {"code": "other"}),
    ("metadata", {"metadata": "{}"}),
]


@pytest.mark.parametrize(("name", "change"), _CHANGES, ids=[n for n, _ in _CHANGES])
def test_exists_with_different_each_field(name: str, change: dict[str, object]) -> None:
    s = snap(acct("a"), acct("b"), acct("c"))
    assert one(s, _STORED) == "ok"
    retry = replace(_STORED, **change)
    assert one(s, retry) == f"exists_with_different_{name}"
    assert one(s, _STORED) == "exists"
    assert len(s.new_transfers) == 1
    assert bal(s, "a") == (10, 0, 0, 0)


def test_exists_with_different_fields_in_the_issues_order() -> None:
    """Change every field, then put them back one at a time: each answer names the first field
    (in the issue's order) that still differs."""
    s = snap(acct("a"), acct("b"), acct("c"))
    assert one(s, _STORED) == "ok"
    changed = {k: v for _, change in _CHANGES for k, v in change.items()}
    for name, change in _CHANGES:
        retry = replace(_STORED, **changed)
        assert one(s, retry) == f"exists_with_different_{name}"
        for key in change:
            del changed[key]
    assert one(s, replace(_STORED, **changed)) == "exists"


def test_exists_for_resolutions_takes_omitted_accounts_and_currency_from_the_hold() -> None:
    s = held()
    assert one(s, post("t", "p", 40, code="cap")) == "ok"
    assert one(s, post("t", "p", 40, code="cap")) == "exists"
    named = post("t", "p", 40, code="cap", debit="a", credit="b", currency="USD")
    assert one(s, named) == "exists"
    assert one(s, post("t", "p", 40, code="cap", debit="b")) == (
        "exists_with_different_debit_account_id"
    )
    assert one(s, post("t", "p", None, code="cap")) == "exists_with_different_amount"
    assert one(s, post("t", "p", 40)) == "exists_with_different_code"
    assert one(s, void("t", "p", 40, code="cap")) == "exists_with_different_flags"
    assert one(s, post("t", "q", 40, code="cap")) == "exists_with_different_pending_id"


# --- linked chains ----------------------------------------------------------------------------


def test_a_linked_chain_applies_all_or_nothing() -> None:
    s = snap(acct("a"), acct("b"), acct("w", DR_LIMIT))
    results = apply(
        s,
        tr("t0"),  # not linked: its own chain
        tr("t1", flags=LINKED),
        tr("t2", flags=PENDING | LINKED),
        resolve(POST | LINKED, "t3", "t2", 5),
        tr("t4", "w", "b"),  # fails: the whole chain goes
        tr("t5"),
    )
    assert results == [
        "ok",
        "linked_event_failed",
        "linked_event_failed",
        "linked_event_failed",
        "exceeds_credits",
        "ok",
    ]
    assert [t.id for t in s.new_transfers] == ["t0", "t5"]
    assert (s.new_holds, s.changed_holds) == ({}, {})
    assert set(s.transfers) == {"t0", "t5"}
    assert bal(s, "a") == (0, 20, 0, 0)
    assert bal(s, "w") == (0, 0, 0, 0)


def test_a_chain_failing_first_fails_the_rest_even_if_they_would_fail_themselves() -> None:
    s = snap()
    assert apply(s, tr("t1", amount=0, flags=LINKED), tr("t2", "a", "a")) == [
        "amount_must_not_be_zero",
        "linked_event_failed",
    ]


def test_a_trailing_linked_transfer_leaves_the_chain_open() -> None:
    s = snap()
    assert apply(s, tr("t1"), tr("t2", flags=LINKED), tr("t3", flags=LINKED)) == [
        "ok",
        "linked_event_failed",
        "linked_event_chain_open",
    ]
    assert apply(s, tr("t4", amount=0, flags=LINKED)) == ["linked_event_chain_open"]
    assert [t.id for t in s.new_transfers] == ["t1"]


def test_a_chain_already_failed_marks_its_open_end_as_failed() -> None:
    s = snap()
    assert apply(s, tr("t1", amount=0, flags=LINKED), tr("t2", flags=LINKED)) == [
        "amount_must_not_be_zero",
        "linked_event_failed",
    ]


def test_a_retried_committed_chain_answers_exists_for_every_member() -> None:
    chain = [tr("t1", flags=LINKED), tr("t2", flags=PENDING | LINKED), post("t3", "t2", 4)]
    s = snap()
    assert apply(s, *chain) == ["ok", "ok", "ok"]
    assert apply(s, *chain) == ["exists", "exists", "exists"]
    assert len(s.new_transfers) == 3
    assert bal(s, "a") == (0, 14, 0, 0)


def test_a_chain_half_old_and_half_new_fails() -> None:
    s = snap()
    assert apply(s, tr("t1")) == ["ok"]
    assert apply(s, tr("t2", flags=LINKED), tr("t1")) == ["linked_event_failed", "exists"]
    assert apply(s, tr("t1", flags=LINKED), tr("t2")) == [
        "exists_with_different_flags",
        "linked_event_failed",
    ]
    assert [t.id for t in s.new_transfers] == ["t1"]


def test_a_transfer_repeated_within_its_chain_is_applied_once() -> None:
    """Regression: the repeat answered `exists` but the chain was rolled back, so the client was
    told a transfer existed that was never written."""
    s = snap()
    twice = tr("t1", flags=LINKED)
    assert apply(s, twice, twice, tr("t2")) == ["ok", "exists", "ok"]
    assert [t.id for t in s.new_transfers] == ["t1", "t2"]
    assert bal(s, "b") == (0, 0, 0, 20)
    # the same repeat in a chain that fails still writes nothing and answers no `exists`
    s = snap(acct("a"), acct("b"), acct("w", DR_LIMIT))
    results = apply(s, twice, twice, tr("t2", "w", "b"))
    assert results == ["linked_event_failed", "linked_event_failed", "exceeds_credits"]
    assert s.new_transfers == []


def test_a_failed_chain_restores_the_holds_it_resolved() -> None:
    s = held()
    s.new_holds.clear()  # as if the hold were stored by an earlier request
    assert apply(s, resolve(POST | LINKED, "t1", "p", 30), tr("t2", amount=0)) == [
        "linked_event_failed",
        "amount_must_not_be_zero",
    ]
    assert s.holds["p"].state is HoldState.PENDING
    assert s.changed_holds == {}
    assert bal(s, "a") == (100, 0, 0, 0)
    assert one(s, void("t3", "p")) == "ok"
    assert s.changed_holds["p"].state is HoldState.VOIDED


# --- holds ------------------------------------------------------------------------------------


def test_a_hold_moves_pending_balances_only() -> None:
    s = held(timeout_s=5)
    assert bal(s, "a") == (100, 0, 0, 0)
    assert bal(s, "b") == (0, 0, 100, 0)
    hold = s.holds["p"]
    assert (hold.amount, hold.state, hold.expires_us) == (100, HoldState.PENDING, NOW + 5 * S)
    assert s.new_holds == {"p": hold}
    assert s.new_transfers[0].expires_us == NOW + 5 * S


def test_a_partial_post_releases_the_rest() -> None:
    s = held()
    assert one(s, post("t", "p", 30)) == "ok"
    assert bal(s, "a") == (0, 30, 0, 0)
    assert bal(s, "b") == (0, 0, 0, 30)
    record = s.new_transfers[-1]
    assert (record.amount, record.requested_amount, record.pending_id) == (30, 30, "p")
    assert (record.currency, record.code, record.debit_account_id) == ("USD", "pay", "a")
    assert s.holds["p"].state is HoldState.POSTED
    # created and resolved in one snapshot: written once, in its final state
    assert s.new_holds["p"].state is HoldState.POSTED
    assert s.changed_holds == {}


def test_a_post_without_amount_posts_the_full_hold() -> None:
    s = held()
    assert one(s, post("t", "p")) == "ok"
    assert bal(s, "a") == (0, 100, 0, 0)
    assert s.new_transfers[-1].amount == 100
    assert s.new_transfers[-1].requested_amount is None


def test_a_post_may_not_exceed_the_hold() -> None:
    s = held()
    assert one(s, post("t", "p", 101)) == "exceeds_pending_transfer_amount"
    assert one(s, post("t", "p", 100)) == "ok"


@pytest.mark.parametrize("amount", [None, 100])
def test_a_void_releases_the_full_amount(amount: int | None) -> None:
    s = held()
    assert one(s, void("t", "p", amount)) == "ok"
    assert bal(s, "a") == (0, 0, 0, 0)
    assert bal(s, "b") == (0, 0, 0, 0)
    assert s.new_transfers[-1].amount == 100
    assert s.holds["p"].state is HoldState.VOIDED


@pytest.mark.parametrize("amount", [1, 99, 101])
def test_a_void_must_name_the_full_amount(amount: int) -> None:
    s = held()
    assert one(s, void("t", "p", amount)) == "pending_transfer_has_different_amount"
    assert bal(s, "a") == (100, 0, 0, 0)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (post("t1", "p"), post("t2", "p"), "pending_transfer_already_posted"),
        (post("t1", "p", 10), void("t2", "p"), "pending_transfer_already_posted"),
        (void("t1", "p"), post("t2", "p"), "pending_transfer_already_voided"),
        (void("t1", "p"), void("t2", "p"), "pending_transfer_already_voided"),
    ],
)
def test_a_hold_resolves_once(first: TransferInput, second: TransferInput, expected: str) -> None:
    s = held()
    assert one(s, first) == "ok"
    after = bal(s, "a")
    assert one(s, second) == expected
    assert bal(s, "a") == after


def test_post_or_void_of_a_transfer_that_is_no_hold() -> None:
    s = snap()
    assert one(s, tr("plain")) == "ok"
    assert one(s, post("t", "plain")) == "pending_transfer_not_pending"
    assert one(s, void("t", "plain")) == "pending_transfer_not_pending"


def test_posting_needs_open_accounts_but_voiding_does_not() -> None:
    s = held()
    s.accounts["a"] = acct("a", CLOSED, dp=100)
    assert one(s, post("t", "p")) == "debit_account_closed"
    assert one(s, void("t", "p")) == "ok"
    assert bal(s, "a") == (0, 0, 0, 0)


def test_a_hold_and_its_post_in_one_request() -> None:
    s = snap()
    assert apply(s, tr("p", flags=PENDING, amount=50), post("t", "p", 20)) == ["ok", "ok"]
    assert bal(s, "a") == (0, 20, 0, 0)


# --- expiry -----------------------------------------------------------------------------------


def test_a_hold_expires_exactly_at_its_timeout() -> None:
    s = held(timeout_s=5)
    s.now_us = NOW + 5 * S - 1
    assert expire_due_holds(s) == []
    s.now_us = NOW + 5 * S
    [expired] = expire_due_holds(s)
    assert (expired.transfer_id, expired.state, expired.resolved_us) == (
        "p",
        HoldState.EXPIRED,
        NOW + 5 * S,
    )
    assert bal(s, "a") == (0, 0, 0, 0)
    assert bal(s, "b") == (0, 0, 0, 0)
    assert expire_due_holds(s) == []  # once
    assert one(s, post("t", "p")) == "pending_transfer_expired"
    assert one(s, void("t", "p")) == "pending_transfer_expired"


def test_a_due_hold_never_posts_even_before_it_is_released() -> None:
    s = held(timeout_s=5)
    s.now_us = NOW + 5 * S  # due, but expire_due_holds has not run
    assert one(s, post("t", "p")) == "pending_transfer_expired"
    s.now_us = NOW + 5 * S - 1
    assert one(s, post("t", "p")) == "ok"


def test_a_hold_without_timeout_never_expires() -> None:
    s = held()
    s.now_us += 10**9 * S
    assert expire_due_holds(s) == []
    assert one(s, post("t", "p")) == "ok"


def test_an_expired_hold_stops_counting_against_the_limit() -> None:
    s = held(acct("a", DR_LIMIT, cpo=100), acct("b"), timeout_s=1)
    assert one(s, tr("t1", amount=1)) == "exceeds_credits"
    s.now_us += S
    expire_due_holds(s)
    assert one(s, tr("t1", amount=100)) == "ok"


def test_expiry_only_touches_holds_whose_accounts_are_locked() -> None:
    s = snap(acct("a"), acct("b"), acct("c"))
    assert apply(
        s,
        tr("h2", "a", "c", 2, flags=PENDING, timeout_s=2),
        tr("h1", "a", "b", 1, flags=PENDING, timeout_s=1),
    ) == ["ok", "ok"]
    s.now_us += 3 * S
    assert [h.transfer_id for h in expire_due_holds(s, locked={"a", "b"})] == ["h1"]
    assert bal(s, "a") == (2, 0, 0, 0)
    assert [h.transfer_id for h in expire_due_holds(s)] == ["h2"]
    # created in this snapshot: written once, in their final state
    assert {h: s.new_holds[h].state for h in ("h1", "h2")} == {
        "h1": HoldState.EXPIRED,
        "h2": HoldState.EXPIRED,
    }
    assert s.changed_holds == {}


def test_expire_due_holds_goes_in_order_of_expiry() -> None:
    s = snap()
    holds = [tr(f"h{n}", amount=1, flags=PENDING, timeout_s=t) for n, t in enumerate((3, 1, 2))]
    assert apply(s, *holds) == ["ok"] * 3
    s.new_holds.clear()
    s.now_us += 3 * S
    assert [h.transfer_id for h in expire_due_holds(s)] == ["h1", "h2", "h0"]
    assert set(s.changed_holds) == {"h0", "h1", "h2"}


# --- balancing --------------------------------------------------------------------------------


def test_balancing_debit_moves_at_most_what_the_credits_allow() -> None:
    s = snap(acct("w", DR_LIMIT, cpo=100, dp=30), acct("b"))
    assert one(s, tr("t1", "w", "b", 500, flags=BAL_DR)) == "ok"
    record = s.new_transfers[-1]
    assert (record.amount, record.requested_amount) == (70, 500)  # 100 - 30 held
    assert bal(s, "w") == (30, 70, 0, 100)
    assert one(s, tr("t1", "w", "b", 500, flags=BAL_DR)) == "exists"  # compared as requested
    assert one(s, tr("t2", "w", "b", 1, flags=BAL_DR)) == "exceeds_credits"


def test_balancing_debit_takes_less_than_asked_only_when_it_must() -> None:
    s = snap(acct("w", DR_LIMIT, cpo=100), acct("b"))
    assert one(s, tr("t1", "w", "b", 40, flags=BAL_DR | PENDING)) == "ok"
    assert s.holds["t1"].amount == 40
    assert bal(s, "w") == (40, 0, 0, 100)


def test_balancing_credit_moves_at_most_what_the_debits_allow() -> None:
    s = snap(acct("a"), acct("pay", CR_LIMIT, dpo=50, cpo=20))
    assert one(s, tr("t1", "a", "pay", 100, flags=BAL_CR)) == "ok"
    assert s.new_transfers[-1].amount == 30
    assert bal(s, "pay") == (0, 50, 0, 50)
    assert one(s, tr("t2", "a", "pay", 100, flags=BAL_CR)) == "exceeds_debits"


def test_balancing_clamps_an_unlimited_account_too() -> None:
    """TigerBeetle's rule: the clamp is the balancing flag's, whatever the account's flags."""
    s = snap(acct("a", cpo=25), acct("b"))
    assert one(s, tr("t1", "a", "b", 100, flags=BAL_DR)) == "ok"
    assert s.new_transfers[-1].amount == 25


def test_balancing_both_sides_takes_the_smaller() -> None:
    s = snap(acct("w", cpo=40), acct("pay", dpo=15))
    assert one(s, tr("t1", "w", "pay", 100, flags=BAL_DR | BAL_CR)) == "ok"
    assert s.new_transfers[-1].amount == 15


# --- accounts ---------------------------------------------------------------------------------


def _account(**change: object) -> AccountInput:
    return replace(AccountInput("acc", "USD", "wallet", DR_LIMIT, "{}"), **change)


def test_account_results() -> None:
    stored = AccountState("acc", "USD", "wallet", DR_LIMIT, "{}", Balances())
    assert account_result(None, _account(), reserved=False) == "ok"
    assert account_result(None, _account(), reserved=True) == "account_reserved"
    assert account_result(stored, _account(), reserved=True) == "account_reserved"
    assert account_result(stored, _account(), reserved=False) == "exists"
    everything = {"currency": "EUR", "code": "fees", "flags": AccountFlag(0), "metadata": '{"a":1}'}
    for name in ("currency", "code", "flags", "metadata"):
        assert account_result(stored, _account(**everything), reserved=False) == (
            f"exists_with_different_{name}"
        )
        del everything[name]


def test_reserved_prefixes() -> None:
    for prefix in ("escrow:", "seller:", "gateway:", "deposit:", "platform:"):
        assert is_reserved(prefix + "x")
    assert not is_reserved("wallet:escrow:x")
    assert not is_reserved("escrow")


# --- guards -----------------------------------------------------------------------------------


def test_balances_refuse_to_go_negative() -> None:
    with pytest.raises(LedgerInvariantError):
        Balances().add(debits_posted=-1)


def test_hold_due() -> None:
    hold = Hold("h", "a", "b", 1, NOW, HoldState.PENDING)
    assert hold.due(NOW)
    assert not hold.due(NOW - 1)
    assert not Hold("h", "a", "b", 1, None, HoldState.PENDING).due(NOW)
    assert not Hold("h", "a", "b", 1, NOW, HoldState.POSTED).due(NOW)
