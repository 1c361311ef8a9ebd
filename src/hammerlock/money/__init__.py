"""The money kernel: integer minor units, the ISO 4217 table, rounding, allocation, fee rules.

No I/O, no clock, no mutable state; every other domain may depend on it and it depends on none.
"""

from hammerlock.money.currency import ISO_4217_EXPONENTS, Currency, get_currency
from hammerlock.money.errors import (
    CurrencyMismatch,
    InvalidAmount,
    InvariantViolation,
    MoneyError,
    UnknownCurrency,
)
from hammerlock.money.model import (
    BPS_PER_WHOLE,
    MAX_API_AMOUNT,
    PARSE_TEXT_LEN_MAX,
    WEIGHT_COUNT_MAX,
    FeeRule,
    Money,
    Rounding,
    allocate,
    round_ratio,
)

__all__ = [
    "BPS_PER_WHOLE",
    "ISO_4217_EXPONENTS",
    "MAX_API_AMOUNT",
    "PARSE_TEXT_LEN_MAX",
    "WEIGHT_COUNT_MAX",
    "Currency",
    "CurrencyMismatch",
    "FeeRule",
    "InvalidAmount",
    "InvariantViolation",
    "Money",
    "MoneyError",
    "Rounding",
    "UnknownCurrency",
    "allocate",
    "get_currency",
    "round_ratio",
]
