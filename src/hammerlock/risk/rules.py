"""Loading :class:`~hammerlock.risk.model.RiskRules` from a small TOML file.

The built-in rules are ``default_rules.toml`` next to this module (package data); its comments
document every key. Keys left out keep their defaults; unknown keys are refused, so a typo
never silently switches a rule off.

Errors::

    ValueError
     └── InvalidRiskRules   the file is not valid TOML or breaks the rules' schema
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from hammerlock.money import Money, MoneyError
from hammerlock.risk.model import (
    CountryMismatchRule,
    NewCustomerRule,
    RiskRules,
    VelocityRule,
)

__all__ = ["DEFAULT_RULES_RESOURCE", "InvalidRiskRules", "load_rules", "parse_rules"]

DEFAULT_RULES_RESOURCE = "default_rules.toml"
MAX_RULES_BYTES = 64 * 1024
_VERSION = 1

T = TypeVar("T")

_TOP = {"version", "amount", "velocity", "new_customer", "country_mismatch", "score"}
_AMOUNT = {"review", "four_eyes"}
_VELOCITY = {"window_s", "card", "customer"}
_VELOCITY_RULE = {"enabled", "max_payments", "points"}
_NEW_CUSTOMER = {"enabled", "amount", "points"}
_COUNTRY = {"enabled", "points"}
_SCORE = {"review_enabled", "threshold"}


class InvalidRiskRules(ValueError):
    """The risk rules file cannot be used; the message names the key."""

    code = "invalid_risk_rules"


def load_rules(path: Path | None = None) -> RiskRules:
    """The rules in ``path``, or the built-in rules when ``path`` is None."""
    if path is None:
        text = resources.files("hammerlock.risk").joinpath(DEFAULT_RULES_RESOURCE).read_text()
        return parse_rules(text, source=DEFAULT_RULES_RESOURCE)
    with path.open("rb") as f:
        raw = f.read(MAX_RULES_BYTES + 1)
    if len(raw) > MAX_RULES_BYTES:
        raise InvalidRiskRules(f"{path}: larger than {MAX_RULES_BYTES} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidRiskRules(f"{path}: not UTF-8") from exc
    return parse_rules(text, source=str(path))


def parse_rules(text: str, *, source: str = "<rules>") -> RiskRules:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRiskRules(f"{source}: not valid TOML: {exc}") from exc
    try:
        return _rules(doc)
    except InvalidRiskRules as exc:
        raise InvalidRiskRules(f"{source}: {exc}") from None
    except ValueError as exc:  # a value the model refuses (range checks)
        raise InvalidRiskRules(f"{source}: {exc}") from None


def _rules(doc: Mapping[str, Any]) -> RiskRules:
    _keys(doc, _TOP, "")
    if _get(doc, "version", int, _VERSION, "") != _VERSION:
        raise InvalidRiskRules(f"version must be {_VERSION}")
    base = RiskRules()
    amount = _table(doc, "amount", _AMOUNT, "")
    velocity = _table(doc, "velocity", _VELOCITY, "")
    score = _table(doc, "score", _SCORE, "")
    return RiskRules(
        review_thresholds_minor=_amounts(amount, "review", base.review_thresholds_minor, "amount"),
        four_eyes_thresholds_minor=_amounts(
            amount, "four_eyes", base.four_eyes_thresholds_minor, "amount"
        ),
        velocity_window_s=_get(velocity, "window_s", int, base.velocity_window_s, "velocity"),
        card_velocity=_velocity(velocity, "card", base.card_velocity),
        customer_velocity=_velocity(velocity, "customer", base.customer_velocity),
        new_customer=_new_customer(doc, base.new_customer),
        country_mismatch=_country(doc, base.country_mismatch),
        score_review_enabled=_get(
            score, "review_enabled", bool, base.score_review_enabled, "score"
        ),
        score_threshold=_get(score, "threshold", int, base.score_threshold, "score"),
    )


def _velocity(velocity: Mapping[str, Any], name: str, base: VelocityRule) -> VelocityRule:
    where = f"velocity.{name}"
    table = _table(velocity, name, _VELOCITY_RULE, "velocity")
    return VelocityRule(
        enabled=_get(table, "enabled", bool, base.enabled, where),
        max_payments=_get(table, "max_payments", int, base.max_payments, where),
        points=_get(table, "points", int, base.points, where),
    )


def _new_customer(doc: Mapping[str, Any], base: NewCustomerRule) -> NewCustomerRule:
    table = _table(doc, "new_customer", _NEW_CUSTOMER, "")
    return NewCustomerRule(
        enabled=_get(table, "enabled", bool, base.enabled, "new_customer"),
        amounts_minor=_amounts(table, "amount", base.amounts_minor, "new_customer"),
        points=_get(table, "points", int, base.points, "new_customer"),
    )


def _country(doc: Mapping[str, Any], base: CountryMismatchRule) -> CountryMismatchRule:
    table = _table(doc, "country_mismatch", _COUNTRY, "")
    return CountryMismatchRule(
        enabled=_get(table, "enabled", bool, base.enabled, "country_mismatch"),
        points=_get(table, "points", int, base.points, "country_mismatch"),
    )


# --------------------------------------------------------------------------------------------


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InvalidRiskRules(f"unknown key {_path(where, unknown[0])!r}")


def _table(parent: Mapping[str, Any], key: str, allowed: set[str], where: str) -> Mapping[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise InvalidRiskRules(f"{_path(where, key)} must be a table")
    _keys(value, allowed, _path(where, key))
    return value


def _get(parent: Mapping[str, Any], key: str, kind: type[T], default: T, where: str) -> T:
    value = parent.get(key, default)
    # bool is an int in Python; TOML keeps them apart, and so do we.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidRiskRules(f"{_path(where, key)} must be a {kind.__name__}")
    return value


def _amounts(
    parent: Mapping[str, Any], key: str, default: Mapping[str, int], where: str
) -> Mapping[str, int]:
    if key not in parent:
        return default
    table = parent[key]
    if not isinstance(table, dict):
        raise InvalidRiskRules(f'{_path(where, key)} must be a table of CUR = "amount"')
    amounts: dict[str, int] = {}
    for currency, text in table.items():
        name = f"{_path(where, key)}.{currency}"
        if not isinstance(text, str):
            raise InvalidRiskRules(f'{name} must be a decimal string such as "10000.00"')
        try:
            amounts[currency] = Money.parse(text, currency).minor
        except MoneyError as exc:
            raise InvalidRiskRules(f"{name}: {exc}") from None
    return amounts
