"""The money kernel: parsing, formatting, arithmetic, rounding, allocation and fee rules."""

from __future__ import annotations

import dataclasses
import decimal
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.errors import DomainError
from hammerlock.money import (
    ISO_4217_EXPONENTS,
    MAX_API_AMOUNT,
    WEIGHT_COUNT_MAX,
    Currency,
    CurrencyMismatch,
    FeeRule,
    InvalidAmount,
    Money,
    MoneyError,
    Rounding,
    UnknownCurrency,
    allocate,
    get_currency,
    round_ratio,
)
from tests.strategies import (
    allocation_weights,
    api_money,
    basis_points,
    currency_codes,
    money,
    roundings,
    same_currency_money,
    unknown_currency_codes,
)

# --- the currency table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("JPY", 0),
        ("KRW", 0),
        ("CLP", 0),
        ("ISK", 0),
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("KWD", 3),
        ("BHD", 3),
        ("JOD", 3),
        ("OMR", 3),
        ("TND", 3),
        ("IQD", 3),
        ("LYD", 3),
        ("CLF", 4),
        ("UYW", 4),
    ],
)
def test_known_exponents(code: str, exponent: int) -> None:
    assert get_currency(code) == Currency(code, exponent)


def test_table_holds_only_well_formed_active_codes() -> None:
    assert len(ISO_4217_EXPONENTS) > 150
    for code, exponent in ISO_4217_EXPONENTS.items():
        assert len(code) == 3
        assert code.isascii()
        assert code.isalpha()
        assert code.isupper()
        assert exponent in {0, 2, 3, 4}


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        ISO_4217_EXPONENTS["ABC"] = 2  # type: ignore[index]


@pytest.mark.parametrize(
    "code",
    [
        "XAU",
        "XAG",
        "XPT",
        "XPD",
        "XDR",
        "XXX",
        "XTS",
        "HRK",
        "usd",
        "Usd",
        "US",
        "USDD",
        "",
        " USD",
    ],
)
def test_unknown_codes_are_rejected(code: str) -> None:
    with pytest.raises(UnknownCurrency):
        get_currency(code)
    with pytest.raises(UnknownCurrency):
        Money(1, code)


@given(unknown_currency_codes())
def test_anything_outside_the_table_is_unknown(code: str) -> None:
    with pytest.raises(UnknownCurrency):
        Money.parse("1", code)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownCurrency, "unknown_currency"),
        (CurrencyMismatch, "currency_mismatch"),
        (InvalidAmount, "invalid_amount"),
    ],
)
def test_errors_have_stable_codes(error: type[MoneyError], code: str) -> None:
    assert error.code == code
    assert issubclass(error, MoneyError)
    assert issubclass(error, DomainError)


# --- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize("minor", [True, False, 1.0, Decimal(1), "1", None])
def test_minor_must_be_a_plain_int(minor: object) -> None:
    with pytest.raises(InvalidAmount):
        Money(minor, "USD")  # type: ignore[arg-type]


def test_money_is_frozen() -> None:
    amount = Money.of(100, "USD")
    with pytest.raises(dataclasses.FrozenInstanceError):
        amount.minor = 5  # type: ignore[misc]


def test_of_and_zero() -> None:
    assert Money.of(1999, "USD") == Money(1999, "USD")
    assert Money.zero("JPY") == Money(0, "JPY")
    assert Money(-5, "USD").minor == -5  # ledger deltas may be negative


# --- parse and format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "currency", "minor", "formatted"),
    [
        ("193500.00", "USD", 19_350_000, "193500.00"),
        ("12", "USD", 1200, "12.00"),
        ("0.5", "USD", 50, "0.50"),
        ("0.05", "USD", 5, "0.05"),
        ("0", "USD", 0, "0.00"),
        ("007.10", "USD", 710, "7.10"),
        ("500", "JPY", 500, "500"),
        ("0", "JPY", 0, "0"),
        ("1.250", "KWD", 1250, "1.250"),
        ("1.25", "KWD", 1250, "1.250"),
        ("0.001", "KWD", 1, "0.001"),
        ("0.0001", "CLF", 1, "0.0001"),
        ("90071992547409.91", "USD", MAX_API_AMOUNT, "90071992547409.91"),
        (str(MAX_API_AMOUNT), "JPY", MAX_API_AMOUNT, str(MAX_API_AMOUNT)),
    ],
)
def test_parse_and_format(text: str, currency: str, minor: int, formatted: str) -> None:
    amount = Money.parse(text, currency)
    assert amount == Money(minor, currency)
    assert amount.format() == formatted


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [("1.500", "USD", 150), ("500.000", "JPY", 500), ("2.10000", "KWD", 2100)],
)
def test_trailing_zeros_beyond_the_exponent_are_accepted(
    text: str, currency: str, minor: int
) -> None:
    assert Money.parse(text, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("text", "currency"),
    [("1.005", "USD"), ("0.001", "USD"), ("0.5", "JPY"), ("1.0001", "KWD"), ("1.00001", "CLF")],
)
def test_too_many_decimals_are_rejected_never_rounded(text: str, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(text, currency)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        " 1",
        "1 ",
        "1\n",
        "+1",
        "--1",
        "1.",
        ".5",
        "1.2.3",
        "1,000",
        "1_000",
        "1e3",
        "1E3",
        "0x10",
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "\u0661\u0662",  # Arabic-Indic digits
        "\uff11",  # full-width 1
        "1." + "0" * 70,  # longer than PARSE_TEXT_LEN_MAX
    ],
)
def test_malformed_text_is_rejected(text: str) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(text, "USD")


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("90071992547409.92", "USD"),
        (str(MAX_API_AMOUNT + 1), "JPY"),
        ("9" * 40, "JPY"),
        ("-" + str(MAX_API_AMOUNT + 1), "JPY"),
    ],
)
def test_out_of_range_is_rejected(text: str, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(text, currency, allow_negative=True)


def test_negative_text_needs_allow_negative() -> None:
    with pytest.raises(InvalidAmount):
        Money.parse("-3.25", "USD")
    with pytest.raises(InvalidAmount):
        Money.parse("-0", "USD")
    assert Money.parse("-3.25", "USD", allow_negative=True) == Money(-325, "USD")
    assert Money.parse("-0", "USD", allow_negative=True) == Money(0, "USD")


def test_parse_checks_the_currency_first() -> None:
    with pytest.raises(UnknownCurrency):
        Money.parse("not a number", "usd")


def test_errors_do_not_echo_the_input() -> None:
    with pytest.raises(InvalidAmount) as caught:
        Money.parse("4242424242424242.123", "USD")
    assert "4242" not in str(caught.value)


@pytest.mark.parametrize(
    ("minor", "currency", "formatted"),
    [(-325, "USD", "-3.25"), (-5, "USD", "-0.05"), (-500, "JPY", "-500"), (-1, "KWD", "-0.001")],
)
def test_format_negative(minor: int, currency: str, formatted: str) -> None:
    assert Money(minor, currency).format() == formatted


@given(money())
def test_parse_inverts_format(amount: Money) -> None:
    assert Money.parse(amount.format(), amount.currency, allow_negative=True) == amount


@given(api_money())
def test_format_has_exactly_exponent_decimals(amount: Money) -> None:
    text = amount.format()
    exponent = ISO_4217_EXPONENTS[amount.currency]
    if exponent == 0:
        assert "." not in text
    else:
        assert len(text.partition(".")[2]) == exponent


# --- arithmetic and comparison ------------------------------------------------------------------


def test_arithmetic_within_one_currency() -> None:
    a, b = Money(150, "USD"), Money(25, "USD")
    assert a + b == Money(175, "USD")
    assert a - b == Money(125, "USD")
    assert b - a == Money(-125, "USD")
    assert -a == Money(-150, "USD")
    assert b < a
    assert b <= a
    assert a > b
    assert a >= b
    assert a <= Money(150, "USD")


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
)
def test_operations_across_currencies_raise(operation: object) -> None:
    with pytest.raises(CurrencyMismatch):
        operation(Money(1, "USD"), Money(1, "EUR"))  # type: ignore[operator]


def test_equality_across_currencies_is_false_not_an_error() -> None:
    assert Money(100, "USD") != Money(100, "EUR")
    assert Money(0, "USD") != Money(0, "JPY")


def test_no_arithmetic_with_plain_numbers() -> None:
    with pytest.raises(TypeError):
        Money(1, "USD") + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        Money(1, "USD") < 1  # type: ignore[operator]  # noqa: B015
    with pytest.raises(TypeError):
        Money(1, "USD") * 2  # type: ignore[operator]


@given(same_currency_money(3))
def test_addition_is_associative_and_commutative(amounts: list[Money]) -> None:
    a, b, c = amounts
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a
    assert (a + b) - b == a


# --- rounding -----------------------------------------------------------------------------------

_DECIMAL_MODES = {
    Rounding.HALF_UP: decimal.ROUND_HALF_UP,
    Rounding.HALF_EVEN: decimal.ROUND_HALF_EVEN,
    Rounding.DOWN: decimal.ROUND_DOWN,
    Rounding.UP: decimal.ROUND_UP,
    Rounding.FLOOR: decimal.ROUND_FLOOR,
    Rounding.CEILING: decimal.ROUND_CEILING,
}


@pytest.mark.parametrize(
    ("n", "mode", "expected"),
    [
        (5, Rounding.HALF_UP, 3),
        (-5, Rounding.HALF_UP, -3),
        (5, Rounding.HALF_EVEN, 2),
        (7, Rounding.HALF_EVEN, 4),
        (-5, Rounding.HALF_EVEN, -2),
        (-7, Rounding.HALF_EVEN, -4),
        (7, Rounding.DOWN, 3),
        (-7, Rounding.DOWN, -3),
        (7, Rounding.UP, 4),
        (-7, Rounding.UP, -4),
        (7, Rounding.FLOOR, 3),
        (-7, Rounding.FLOOR, -4),
        (7, Rounding.CEILING, 4),
        (-7, Rounding.CEILING, -3),
        (8, Rounding.UP, 4),
        (-8, Rounding.DOWN, -4),
    ],
)
def test_round_ratio_halves(n: int, mode: Rounding, expected: int) -> None:
    assert round_ratio(n, 2, mode) == expected


@pytest.mark.parametrize("d", [0, -1])
def test_round_ratio_needs_a_positive_denominator(d: int) -> None:
    with pytest.raises(ValueError, match="denominator"):
        round_ratio(1, d, Rounding.HALF_UP)


_RATIO_NUMERATORS = st.one_of(st.integers(-1000, 1000), st.integers(-(10**30), 10**30))
_RATIO_DENOMINATORS = st.one_of(st.integers(1, 20), st.integers(1, 10**12))


@given(_RATIO_NUMERATORS, _RATIO_DENOMINATORS, roundings())
def test_round_ratio_agrees_with_decimal(n: int, d: int, mode: Rounding) -> None:
    # Enough precision that n / d is never rounded onto an integer or a midpoint: the error is
    # below 1 / (2 * d), the smallest gap between an inexact n / d and either.
    precision = len(str(abs(n))) + len(str(d)) + 5
    context = decimal.Context(prec=precision, rounding=decimal.ROUND_HALF_EVEN)
    quotient = context.divide(Decimal(n), Decimal(d))
    expected = quotient.quantize(Decimal(1), rounding=_DECIMAL_MODES[mode], context=context)
    assert round_ratio(n, d, mode) == int(expected)


def test_rounding_values_are_stable() -> None:
    assert {mode.value for mode in Rounding} == {
        "half_up",
        "half_even",
        "down",
        "up",
        "floor",
        "ceiling",
    }


# --- scaling ------------------------------------------------------------------------------------


def test_multiply_ratio_and_apply_bps() -> None:
    amount = Money(1001, "USD")
    assert amount.multiply_ratio(1, 2, Rounding.HALF_UP) == Money(501, "USD")
    assert amount.multiply_ratio(1, 2, Rounding.HALF_EVEN) == Money(500, "USD")
    assert amount.apply_bps(250, Rounding.HALF_UP) == Money(25, "USD")  # 25.025
    assert amount.apply_bps(250, Rounding.UP) == Money(26, "USD")
    assert amount.apply_bps(10_000, Rounding.DOWN) == amount
    assert Money(-1001, "USD").apply_bps(250, Rounding.HALF_UP) == Money(-25, "USD")


def test_apply_bps_rejects_negative_bps() -> None:
    with pytest.raises(ValueError, match="bps"):
        Money(100, "USD").apply_bps(-1, Rounding.DOWN)


@given(money(), basis_points(), roundings())
def test_apply_bps_never_exceeds_the_amount(amount: Money, bps: int, mode: Rounding) -> None:
    part = amount.apply_bps(bps, mode)
    assert part.currency == amount.currency
    assert abs(part.minor) <= abs(amount.minor)
    assert part.minor * amount.minor >= 0  # same sign or zero


# --- allocation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weights", "parts"),
    [
        (100, [1, 1, 1], [34, 33, 33]),
        (-100, [1, 1, 1], [-34, -33, -33]),
        (100, [0, 1], [0, 100]),
        (5, [1, 0, 1, 0], [3, 0, 2, 0]),
        (1, [1, 1, 1], [1, 0, 0]),
        (2, [1, 1, 1], [1, 1, 0]),
        (10, [3, 7], [3, 7]),
        (0, [1, 2], [0, 0]),
        (7, [1, 2, 4], [1, 2, 4]),
        (100, [1, 2], [33, 67]),  # 33.33 and 66.67: the larger remainder gets the unit
    ],
)
def test_allocate_examples(total: int, weights: list[int], parts: list[int]) -> None:
    assert allocate(Money(total, "USD"), weights) == [Money(p, "USD") for p in parts]


@pytest.mark.parametrize(
    "weights",
    [[], [0], [0, 0], [-1, 2], [1, True], [1.5], [1] * (WEIGHT_COUNT_MAX + 1)],
)
def test_allocate_rejects_bad_weights(weights: list[int]) -> None:
    with pytest.raises(ValueError, match="weights"):
        allocate(Money(100, "USD"), weights)


def test_allocate_accepts_the_maximum_weight_count() -> None:
    parts = allocate(Money(WEIGHT_COUNT_MAX + 1, "USD"), [1] * WEIGHT_COUNT_MAX)
    assert sum(part.minor for part in parts) == WEIGHT_COUNT_MAX + 1


@given(money(), allocation_weights())
def test_allocate_sums_exactly_and_stays_within_one_unit(total: Money, weights: list[int]) -> None:
    parts = allocate(total, weights)
    weight_sum = sum(weights)
    assert len(parts) == len(weights)
    assert sum(part.minor for part in parts) == total.minor
    for part, weight in zip(parts, weights, strict=True):
        assert part.currency == total.currency
        # |part - total * weight / weight_sum| < 1, kept in integers
        assert abs(part.minor * weight_sum - total.minor * weight) < weight_sum
        if weight == 0:
            assert part.minor == 0


@given(money(), allocation_weights())
def test_allocate_is_symmetric_in_sign(total: Money, weights: list[int]) -> None:
    assert allocate(-total, weights) == [-part for part in allocate(total, weights)]


# --- fee rules ----------------------------------------------------------------------------------


def test_fee_rule_examples() -> None:
    rule = FeeRule(bps=290, rounding=Rounding.HALF_UP)  # 2.9%
    assert rule.fee_for(Money(1000, "USD")) == Money(29, "USD")
    assert rule.fee_for(Money(1050, "USD")) == Money(30, "USD")  # 30.45
    assert FeeRule(290, Rounding.DOWN).fee_for(Money(1050, "USD")) == Money(30, "USD")
    assert FeeRule(290, Rounding.UP).fee_for(Money(1050, "USD")) == Money(31, "USD")


def test_fee_rule_minimum_applies_but_never_exceeds_the_amount() -> None:
    rule = FeeRule(bps=100, rounding=Rounding.HALF_EVEN, minimum_minor=50)
    assert rule.fee_for(Money(1000, "USD")) == Money(50, "USD")  # 10 raised to the minimum
    assert rule.fee_for(Money(10_000, "USD")) == Money(100, "USD")
    assert rule.fee_for(Money(30, "USD")) == Money(30, "USD")  # capped at the amount
    assert rule.fee_for(Money(0, "USD")) == Money(0, "USD")


def test_fee_rule_rejects_a_negative_amount() -> None:
    with pytest.raises(InvalidAmount):
        FeeRule(100, Rounding.UP).fee_for(Money(-1, "USD"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bps": -1},
        {"bps": 10_001},
        {"bps": True},
        {"minimum_minor": -1},
        {"minimum_minor": MAX_API_AMOUNT + 1},
    ],
)
def test_fee_rule_validates_its_fields(kwargs: dict[str, int]) -> None:
    fields: dict[str, object] = {"bps": 100, "rounding": Rounding.UP, **kwargs}
    with pytest.raises(ValueError, match=r"bps|minimum_minor"):
        FeeRule(**fields)  # type: ignore[arg-type]


def test_fee_rule_needs_a_rounding_mode() -> None:
    with pytest.raises(TypeError):
        FeeRule(100, "half_up")  # type: ignore[arg-type]


@given(
    api_money(),
    basis_points(),
    roundings(),
    st.integers(0, MAX_API_AMOUNT),
)
def test_fee_is_between_zero_and_the_amount(
    amount: Money, bps: int, mode: Rounding, minimum_minor: int
) -> None:
    fee = FeeRule(bps, mode, minimum_minor).fee_for(amount)
    assert fee.currency == amount.currency
    assert Money.zero(amount.currency) <= fee <= amount


@given(api_money(), basis_points(), roundings())
def test_fee_is_rounded_once_with_the_rules_mode(amount: Money, bps: int, mode: Rounding) -> None:
    fee = FeeRule(bps, mode).fee_for(amount)
    assert fee.minor == round_ratio(amount.minor * bps, 10_000, mode)


@given(currency_codes())
def test_every_currency_formats_zero(code: str) -> None:
    exponent = ISO_4217_EXPONENTS[code]
    expected = "0" if exponent == 0 else "0." + "0" * exponent
    assert Money.zero(code).format() == expected
