"""Risk rules and the decision they make about one payment or refund. No I/O, no clock.

:func:`evaluate` takes what is known about a charge or refund (:class:`RiskInput`; the caller
counts the recent payments) and the rules (:class:`RiskRules`; :mod:`hammerlock.risk.rules`
loads them from TOML) and answers a :class:`RiskDecision`: whether a person must approve it
before money moves, how many different people (0, 1 or 2: four-eyes), a score, and the reasons.

Order of the rules (docs/payments.md "Risk rules"):

1. a deposit (an auction's bidder deposit) is never reviewed: nothing else is looked at;
2. amount: ``amount >= review threshold`` of its currency forces review with 1 approval,
   ``amount >= four-eyes threshold`` with 2. A currency without a threshold is never reviewed
   by amount (no conversion from another currency is guessed);
3. refunds stop here: they are reviewed by amount only;
4. score rules, each off unless enabled, each adding its points and a reason: velocity per card
   fingerprint, velocity per customer, a new customer paying at least a per-currency amount,
   card country different from billing country. When the score threshold is enabled and the
   score is *over* it, review is forced (1 approval, or 2 when the amount is over four-eyes).

With the built-in defaults only step 2 can force a review (USD 10,000.00; four-eyes at
USD 100,000.00).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "DEFAULT_FOUR_EYES_THRESHOLDS",
    "DEFAULT_REVIEW_THRESHOLDS",
    "MAX_POINTS",
    "CountryMismatchRule",
    "NewCustomerRule",
    "Reason",
    "ReasonCode",
    "RiskDecision",
    "RiskInput",
    "RiskRules",
    "VelocityRule",
    "evaluate",
]

MAX_POINTS = 1_000  # per rule; a score is at most a few thousand
MAX_AMOUNT_MINOR = 2**53 - 1  # the API's integer bound
MAX_COUNT = 10**9
MAX_WINDOW_S = 30 * 86_400
_MAX_ID_CHARS = 256

DEFAULT_REVIEW_THRESHOLDS: Mapping[str, int] = MappingProxyType({"USD": 1_000_000})  # 10,000.00
DEFAULT_FOUR_EYES_THRESHOLDS: Mapping[str, int] = MappingProxyType({"USD": 10_000_000})


class ReasonCode(enum.StrEnum):
    AMOUNT_OVER_THRESHOLD = "amount_over_threshold"
    AMOUNT_OVER_FOUR_EYES_THRESHOLD = "amount_over_four_eyes_threshold"
    CARD_VELOCITY = "card_velocity"
    CUSTOMER_VELOCITY = "customer_velocity"
    NEW_CUSTOMER_HIGH_AMOUNT = "new_customer_high_amount"
    COUNTRY_MISMATCH = "card_country_mismatch"
    SCORE_OVER_THRESHOLD = "score_over_threshold"


@dataclass(frozen=True, slots=True)
class RiskInput:
    """One charge (or refund) as the risk rules see it.

    ``*_payments_in_window``: payments made *before* this one within the rules' velocity
    window, by the same card fingerprint and by the same customer (the caller counts them).
    Countries are ISO 3166-1 alpha-2 codes, compared case-insensitively; None is unknown.
    """

    amount_minor: int
    currency: str
    is_deposit: bool = False
    is_refund: bool = False
    customer_id: str | None = None
    customer_is_new: bool = False
    card_fingerprint: str | None = None
    card_country: str | None = None
    billing_country: str | None = None
    fingerprint_payments_in_window: int = 0
    customer_payments_in_window: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.amount_minor <= MAX_AMOUNT_MINOR:
            raise ValueError(f"amount_minor must be within 1..{MAX_AMOUNT_MINOR}")
        if len(self.currency) != 3 or not self.currency.isascii() or not self.currency.isupper():
            raise ValueError("currency must be an upper-case ISO 4217 code")
        for count in (self.fingerprint_payments_in_window, self.customer_payments_in_window):
            if not 0 <= count <= MAX_COUNT:
                raise ValueError(f"payment counts must be within 0..{MAX_COUNT}")
        for text in (self.customer_id, self.card_fingerprint):
            if text is not None and len(text) > _MAX_ID_CHARS:
                raise ValueError(f"ids are at most {_MAX_ID_CHARS} characters")
        for country in (self.card_country, self.billing_country):
            if country is not None and not (
                len(country) == 2 and country.isascii() and country.isalpha()
            ):
                raise ValueError("countries are ISO 3166-1 alpha-2 codes")
        if self.is_deposit and self.is_refund:
            raise ValueError("a refund is not a deposit")


@dataclass(frozen=True, slots=True)
class Reason:
    code: ReasonCode
    points: int  # what it adds to the score (0 for the amount rules, which force review)
    detail: str  # for reviewers: what was seen, never a card number


@dataclass(frozen=True, slots=True)
class RiskDecision:
    review_required: bool
    approvals_required: int  # 0 when no review; 1; or 2 different reviewers (four-eyes)
    score: int
    reasons: tuple[Reason, ...]

    def __post_init__(self) -> None:
        if self.approvals_required not in ((1, 2) if self.review_required else (0,)):
            raise ValueError("approvals_required is 0 without review, 1 or 2 with it")
        if self.score != sum(r.points for r in self.reasons):
            raise ValueError("score is the sum of the reasons' points")


def _check_points(points: int) -> None:
    if not 0 <= points <= MAX_POINTS:
        raise ValueError(f"points must be within 0..{MAX_POINTS}")


def _check_amounts(amounts: Mapping[str, int]) -> None:
    for currency, minor in amounts.items():
        if len(currency) != 3 or not currency.isascii() or not currency.isupper():
            raise ValueError(f"{currency!r} is not an upper-case ISO 4217 code")
        if not 0 < minor <= MAX_AMOUNT_MINOR:
            raise ValueError(f"{currency} threshold must be within 1..{MAX_AMOUNT_MINOR}")


@dataclass(frozen=True, slots=True)
class VelocityRule:
    """Fires when ``max_payments`` or more payments preceded this one within the window."""

    enabled: bool = False
    max_payments: int = 5
    points: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.max_payments <= MAX_COUNT:
            raise ValueError(f"max_payments must be within 1..{MAX_COUNT}")
        _check_points(self.points)


@dataclass(frozen=True, slots=True)
class NewCustomerRule:
    """Fires for a new customer paying at least the currency's amount (no amount: never)."""

    enabled: bool = False
    amounts_minor: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({"USD": 200_000})  # 2,000.00
    )
    points: int = 30

    def __post_init__(self) -> None:
        _check_amounts(self.amounts_minor)
        _check_points(self.points)
        object.__setattr__(self, "amounts_minor", MappingProxyType(dict(self.amounts_minor)))


@dataclass(frozen=True, slots=True)
class CountryMismatchRule:
    """Fires when the card's country and the billing country are both known and differ."""

    enabled: bool = False
    points: int = 20

    def __post_init__(self) -> None:
        _check_points(self.points)


@dataclass(frozen=True, slots=True)
class RiskRules:
    """The rules; the defaults are the built-in ones (docs/payments.md "Risk rules")."""

    review_thresholds_minor: Mapping[str, int] = field(
        default_factory=lambda: DEFAULT_REVIEW_THRESHOLDS
    )
    four_eyes_thresholds_minor: Mapping[str, int] = field(
        default_factory=lambda: DEFAULT_FOUR_EYES_THRESHOLDS
    )
    velocity_window_s: int = 3_600
    card_velocity: VelocityRule = field(default_factory=VelocityRule)
    customer_velocity: VelocityRule = field(default_factory=VelocityRule)
    new_customer: NewCustomerRule = field(default_factory=NewCustomerRule)
    country_mismatch: CountryMismatchRule = field(default_factory=CountryMismatchRule)
    score_review_enabled: bool = False
    score_threshold: int = 50  # review when the score is over this (if enabled)

    def __post_init__(self) -> None:
        _check_amounts(self.review_thresholds_minor)
        _check_amounts(self.four_eyes_thresholds_minor)
        if not 1 <= self.velocity_window_s <= MAX_WINDOW_S:
            raise ValueError(f"velocity_window_s must be within 1..{MAX_WINDOW_S}")
        if not 0 <= self.score_threshold <= 10 * MAX_POINTS:
            raise ValueError(f"score_threshold must be within 0..{10 * MAX_POINTS}")
        for currency, four_eyes in self.four_eyes_thresholds_minor.items():
            review = self.review_thresholds_minor.get(currency)
            if review is not None and four_eyes < review:
                raise ValueError(f"{currency}: the four-eyes threshold is below the review one")
        # Frozen copies: a caller's dict changed later must not change the rules.
        for name in ("review_thresholds_minor", "four_eyes_thresholds_minor"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


def evaluate(risk: RiskInput, rules: RiskRules) -> RiskDecision:
    """The decision for ``risk`` under ``rules`` (see the module docstring for the order)."""
    if risk.is_deposit:
        return RiskDecision(review_required=False, approvals_required=0, score=0, reasons=())
    amount_reasons, amount_approvals = _amount(risk, rules)
    if risk.is_refund:
        return _decision(amount_reasons, amount_approvals)
    scored = [
        reason
        for reason in (
            _card_velocity(risk, rules),
            _customer_velocity(risk, rules),
            _new_customer(risk, rules),
            _country_mismatch(risk, rules),
        )
        if reason is not None
    ]
    score = sum(r.points for r in scored)
    approvals = amount_approvals
    if rules.score_review_enabled and score > rules.score_threshold:
        scored.append(
            Reason(
                ReasonCode.SCORE_OVER_THRESHOLD,
                0,
                f"risk score {score} is over the threshold {rules.score_threshold}",
            )
        )
        approvals = max(approvals, 1)
    return _decision([*amount_reasons, *scored], approvals)


def _decision(reasons: list[Reason], approvals: int) -> RiskDecision:
    return RiskDecision(
        review_required=approvals > 0,
        approvals_required=approvals,
        score=sum(r.points for r in reasons),
        reasons=tuple(reasons),
    )


def _amount(risk: RiskInput, rules: RiskRules) -> tuple[list[Reason], int]:
    """Reasons from the per-currency thresholds, and the approvals they require (0, 1, 2)."""
    what = "refund" if risk.is_refund else "amount"
    review = rules.review_thresholds_minor.get(risk.currency)
    four_eyes = rules.four_eyes_thresholds_minor.get(risk.currency)
    if four_eyes is not None and risk.amount_minor >= four_eyes:
        detail = f"{what} {risk.amount_minor} {risk.currency} (minor units) >= {four_eyes}"
        return [Reason(ReasonCode.AMOUNT_OVER_FOUR_EYES_THRESHOLD, 0, detail)], 2
    if review is not None and risk.amount_minor >= review:
        detail = f"{what} {risk.amount_minor} {risk.currency} (minor units) >= {review}"
        return [Reason(ReasonCode.AMOUNT_OVER_THRESHOLD, 0, detail)], 1
    return [], 0


def _card_velocity(risk: RiskInput, rules: RiskRules) -> Reason | None:
    rule = rules.card_velocity
    seen = risk.fingerprint_payments_in_window
    if not rule.enabled or risk.card_fingerprint is None or seen < rule.max_payments:
        return None
    return Reason(
        ReasonCode.CARD_VELOCITY,
        rule.points,
        f"{seen} earlier payments with this card in {rules.velocity_window_s} s "
        f"(limit {rule.max_payments})",
    )


def _customer_velocity(risk: RiskInput, rules: RiskRules) -> Reason | None:
    rule = rules.customer_velocity
    seen = risk.customer_payments_in_window
    if not rule.enabled or risk.customer_id is None or seen < rule.max_payments:
        return None
    return Reason(
        ReasonCode.CUSTOMER_VELOCITY,
        rule.points,
        f"{seen} earlier payments by this customer in {rules.velocity_window_s} s "
        f"(limit {rule.max_payments})",
    )


def _new_customer(risk: RiskInput, rules: RiskRules) -> Reason | None:
    rule = rules.new_customer
    floor = rule.amounts_minor.get(risk.currency)
    if not rule.enabled or not risk.customer_is_new or floor is None:
        return None
    if risk.amount_minor < floor:
        return None
    return Reason(
        ReasonCode.NEW_CUSTOMER_HIGH_AMOUNT,
        rule.points,
        f"new customer paying {risk.amount_minor} {risk.currency} (minor units) >= {floor}",
    )


def _country_mismatch(risk: RiskInput, rules: RiskRules) -> Reason | None:
    rule = rules.country_mismatch
    card, billing = risk.card_country, risk.billing_country
    if not rule.enabled or card is None or billing is None or card.upper() == billing.upper():
        return None
    return Reason(
        ReasonCode.COUNTRY_MISMATCH,
        rule.points,
        f"card issued in {card.upper()}, billing address in {billing.upper()}",
    )
