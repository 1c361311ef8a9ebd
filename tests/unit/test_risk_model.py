"""Risk rules: the decision for one payment, and loading the rules from TOML."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.risk.model import (
    CountryMismatchRule,
    NewCustomerRule,
    RiskInput,
    RiskRules,
    VelocityRule,
    evaluate,
)
from hammerlock.risk.rules import InvalidRiskRules, load_rules, parse_rules
from tests.strategies import risk_inputs, risk_rules

DEFAULTS = RiskRules()
USD_10K = 1_000_000
USD_100K = 10_000_000

ALL_ON = RiskRules(
    card_velocity=VelocityRule(enabled=True, max_payments=3, points=30),
    customer_velocity=VelocityRule(enabled=True, max_payments=5, points=25),
    new_customer=NewCustomerRule(enabled=True, amounts_minor={"USD": 200_000}, points=30),
    country_mismatch=CountryMismatchRule(enabled=True, points=20),
    score_review_enabled=True,
    score_threshold=50,
)


def charge(amount_minor: int, currency: str = "USD", **kw: object) -> RiskInput:
    return RiskInput(amount_minor=amount_minor, currency=currency, **kw)  # type: ignore[arg-type]


def codes(decision: object) -> list[str]:
    return [r.code.value for r in decision.reasons]  # type: ignore[attr-defined]


# --- the examples, with the built-in rules ----------------------------------------------


def test_small_payment_passes() -> None:
    d = evaluate(charge(5_000), DEFAULTS)
    assert (d.review_required, d.approvals_required, d.score, d.reasons) == (False, 0, 0, ())


def test_12k_needs_one_approval() -> None:
    d = evaluate(charge(1_200_000), DEFAULTS)
    assert d.review_required
    assert d.approvals_required == 1
    assert codes(d) == ["amount_over_threshold"]


def test_threshold_is_inclusive() -> None:
    assert evaluate(charge(USD_10K), DEFAULTS).approvals_required == 1
    assert evaluate(charge(USD_10K - 1), DEFAULTS).approvals_required == 0
    assert evaluate(charge(USD_100K), DEFAULTS).approvals_required == 2
    assert evaluate(charge(USD_100K - 1), DEFAULTS).approvals_required == 1


def test_193500_needs_four_eyes() -> None:
    d = evaluate(charge(19_350_000), DEFAULTS)
    assert (d.review_required, d.approvals_required) == (True, 2)
    assert codes(d) == ["amount_over_four_eyes_threshold"]


def test_no_fx_guessing() -> None:
    """A currency without a threshold is never reviewed by amount, however large."""
    for currency in ("EUR", "JPY", "KWD"):
        assert not evaluate(charge(2**53 - 1, currency), DEFAULTS).review_required


def test_deposits_skip_review() -> None:
    d = evaluate(charge(19_350_000, is_deposit=True), ALL_ON)
    assert (d.review_required, d.approvals_required, d.score, d.reasons) == (False, 0, 0, ())


def test_refunds_over_threshold_are_reviewed() -> None:
    assert evaluate(charge(USD_10K - 1, is_refund=True), DEFAULTS).approvals_required == 0
    d = evaluate(charge(1_200_000, is_refund=True), DEFAULTS)
    assert (d.review_required, d.approvals_required) == (True, 1)
    assert evaluate(charge(USD_100K, is_refund=True), DEFAULTS).approvals_required == 2


def test_refunds_ignore_score_rules() -> None:
    risky = charge(
        100_000,
        is_refund=True,
        customer_id="cus_1",
        customer_is_new=True,
        card_fingerprint="fp",
        card_country="US",
        billing_country="GB",
        fingerprint_payments_in_window=99,
        customer_payments_in_window=99,
    )
    assert evaluate(risky, ALL_ON).reasons == ()


def test_score_rules_are_off_by_default() -> None:
    risky = charge(
        300_000,
        customer_id="cus_1",
        customer_is_new=True,
        card_fingerprint="fp",
        card_country="US",
        billing_country="GB",
        fingerprint_payments_in_window=99,
        customer_payments_in_window=99,
    )
    d = evaluate(risky, DEFAULTS)
    assert (d.review_required, d.score, d.reasons) == (False, 0, ())


# --- score rules ---------------------------------------------------------------------------------


def test_each_score_rule_adds_its_reason_and_points() -> None:
    base = charge(10_000, customer_id="cus_1", card_fingerprint="fp")
    cases = [
        (replace(base, fingerprint_payments_in_window=3), "card_velocity", 30),
        (replace(base, customer_payments_in_window=5), "customer_velocity", 25),
        (replace(base, customer_is_new=True, amount_minor=200_000), "new_customer_high_amount", 30),
        (replace(base, card_country="us", billing_country="GB"), "card_country_mismatch", 20),
    ]
    for risk, code, points in cases:
        d = evaluate(risk, ALL_ON)
        assert codes(d) == [code]
        assert d.score == points
        assert not d.review_required  # each alone stays at or under 50


def test_rules_below_their_limits_do_not_fire() -> None:
    quiet = charge(
        199_999,
        customer_id="cus_1",
        card_fingerprint="fp",
        customer_is_new=True,
        card_country="US",
        billing_country="us",
        fingerprint_payments_in_window=2,
        customer_payments_in_window=4,
    )
    assert evaluate(quiet, ALL_ON).reasons == ()
    # unknown facts never count against the payer
    unknown = charge(10_000, fingerprint_payments_in_window=99, customer_payments_in_window=99)
    assert evaluate(unknown, ALL_ON).reasons == ()
    # the new-customer rule has no amount for EUR: it never fires there
    assert evaluate(charge(10**9, "EUR", customer_is_new=True), ALL_ON).reasons == ()


def test_score_over_threshold_forces_review() -> None:
    risky = charge(
        200_000,
        customer_id="cus_1",
        card_fingerprint="fp",
        customer_is_new=True,
        card_country="US",
        billing_country="GB",
    )
    d = evaluate(risky, ALL_ON)  # 30 + 20 = 50: not *over* 50
    assert (d.score, d.review_required) == (50, False)
    d = evaluate(replace(risky, fingerprint_payments_in_window=3), ALL_ON)  # 80
    assert (d.score, d.review_required, d.approvals_required) == (80, True, 1)
    assert codes(d)[-1] == "score_over_threshold"
    off = replace(ALL_ON, score_review_enabled=False)
    assert not evaluate(replace(risky, fingerprint_payments_in_window=3), off).review_required


def test_score_review_keeps_four_eyes_above_its_threshold() -> None:
    risky = charge(USD_100K, card_country="US", billing_country="GB")
    d = evaluate(risky, replace(ALL_ON, score_threshold=0))
    assert d.approvals_required == 2
    assert codes(d) == [
        "amount_over_four_eyes_threshold",
        "card_country_mismatch",
        "score_over_threshold",
    ]


def test_invalid_inputs_and_rules_are_refused() -> None:
    for bad, complaint in (
        ({"amount_minor": 0}, "amount_minor"),
        ({"amount_minor": 2**53}, "amount_minor"),
        ({"currency": "usd"}, "currency"),
        ({"card_country": "USA"}, "alpha-2"),
        ({"fingerprint_payments_in_window": -1}, "counts"),
        ({"is_deposit": True, "is_refund": True}, "not a deposit"),
    ):
        with pytest.raises(ValueError, match=complaint):
            RiskInput(**{"amount_minor": 1, "currency": "USD", **bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="four-eyes"):
        RiskRules(review_thresholds_minor={"USD": 100}, four_eyes_thresholds_minor={"USD": 99})
    with pytest.raises(ValueError, match="points"):
        VelocityRule(points=-1)


# --- properties ----------------------------------------------------------------------------------


@given(risk_inputs(), risk_rules())
def test_decision_is_consistent(risk: RiskInput, rules: RiskRules) -> None:
    d = evaluate(risk, rules)
    assert d.approvals_required in ((1, 2) if d.review_required else (0,))
    assert d.score == sum(r.points for r in d.reasons) >= 0
    assert len({r.code for r in d.reasons}) == len(d.reasons)
    assert evaluate(risk, rules) == d  # deterministic
    if risk.is_deposit:
        assert d == evaluate(replace(risk, amount_minor=1), rules)
        assert not d.review_required
        assert d.reasons == ()
    if risk.is_refund:
        assert d.score == 0


@given(risk_inputs(), risk_rules())
def test_amount_thresholds_decide_alone_when_score_rules_are_off(
    risk: RiskInput, rules: RiskRules
) -> None:
    rules = replace(rules, score_review_enabled=False)
    d = evaluate(risk, rules)
    review = rules.review_thresholds_minor.get(risk.currency)
    four_eyes = rules.four_eyes_thresholds_minor.get(risk.currency)
    expected = 0
    if not risk.is_deposit:
        if four_eyes is not None and risk.amount_minor >= four_eyes:
            expected = 2
        elif review is not None and risk.amount_minor >= review:
            expected = 1
    assert d.approvals_required == expected


@given(risk_inputs(), risk_rules(), st.integers(1, 2**52))
def test_more_money_never_needs_fewer_approvals(
    risk: RiskInput, rules: RiskRules, extra: int
) -> None:
    bigger = replace(risk, amount_minor=min(2**53 - 1, risk.amount_minor + extra))
    assert evaluate(bigger, rules).approvals_required >= evaluate(risk, rules).approvals_required


@given(risk_inputs())
def test_default_rules_review_only_usd_over_10k(risk: RiskInput) -> None:
    d = evaluate(risk, DEFAULTS)
    in_scope = not risk.is_deposit and risk.currency == "USD"
    assert d.review_required == (in_scope and risk.amount_minor >= USD_10K)
    assert d.approvals_required == (
        2 if d.review_required and risk.amount_minor >= USD_100K else 1 if d.review_required else 0
    )
    assert d.score == 0


@given(risk_inputs(), risk_rules())
def test_score_review_can_only_add_reviews(risk: RiskInput, rules: RiskRules) -> None:
    on = evaluate(risk, replace(rules, score_review_enabled=True))
    off = evaluate(risk, replace(rules, score_review_enabled=False))
    assert on.approvals_required >= off.approvals_required
    assert on.score == off.score


# --- loading -------------------------------------------------------------------------------------


def test_shipped_default_file_is_the_builtin_rules() -> None:
    assert load_rules() == RiskRules()


def test_rules_file_overrides_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        """
version = 1
[amount]
review = { USD = "5000", EUR = "9000.50", JPY = "1000000" }
four_eyes = { USD = "50000.00" }
[velocity.card]
enabled = true
max_payments = 2
[country_mismatch]
enabled = true
points = 60
[score]
review_enabled = true
threshold = 59
"""
    )
    rules = load_rules(path)
    assert dict(rules.review_thresholds_minor) == {"USD": 500_000, "EUR": 900_050, "JPY": 1_000_000}
    assert dict(rules.four_eyes_thresholds_minor) == {"USD": 5_000_000}
    assert rules.card_velocity == VelocityRule(enabled=True, max_payments=2, points=30)
    assert rules.customer_velocity == DEFAULTS.customer_velocity
    assert rules.velocity_window_s == 3_600
    d = evaluate(charge(100, "EUR", card_country="FR", billing_country="DE"), rules)
    assert (d.score, d.review_required, d.approvals_required) == (60, True, 1)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("version = 2", "version"),
        ("colour = 1", "unknown key 'colour'"),
        ("[velocity.card]\nenabeld = true", "velocity.card.enabeld"),
        ("[amount]\nreview = { USD = 10000 }", "decimal string"),
        ('[amount]\nreview = { USD = "10000.001" }', "amount.review.USD"),
        ('[amount]\nreview = { XXX1 = "1" }', "amount.review.XXX1"),
        ('[amount]\nreview = { USD = "-5" }', "amount.review.USD"),
        ("[score]\nreview_enabled = 1", "score.review_enabled must be a bool"),
        ("[score]\nthreshold = true", "score.threshold must be a int"),
        ("[velocity.customer]\npoints = 100000", "points"),
        ("[velocity]\nwindow_s = 0", "velocity_window_s"),
        ("velocity = 3", "velocity must be a table"),
        ("not toml ===", "not valid TOML"),
        ('[amount]\nreview = { USD = "200000" }', "four-eyes"),
    ],
)
def test_bad_rules_files_are_refused_with_the_key(text: str, complaint: str) -> None:
    with pytest.raises(InvalidRiskRules, match="<rules>") as info:
        parse_rules(text)
    assert complaint in str(info.value)


def test_oversized_or_binary_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 70_000)
    with pytest.raises(InvalidRiskRules, match="larger than"):
        load_rules(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidRiskRules, match="UTF-8"):
        load_rules(binary)
