"""Errors raised by the money kernel.

Every :class:`MoneyError` is an anticipated failure caused by data that came from outside (a
currency code, a decimal string, an amount): the API maps its stable ``code`` to a 422 problem.
Bad arguments from our own code (a zero denominator, negative weights) raise :class:`ValueError`,
and a broken invariant raises :class:`InvariantViolation`: both are bugs and crash loudly.

    hammerlock.errors.DomainError
     └── MoneyError                    code "money_error"
          ├── UnknownCurrency          code "unknown_currency"   not in the ISO 4217 table
          ├── CurrencyMismatch         code "currency_mismatch"  arithmetic across currencies
          └── InvalidAmount            code "invalid_amount"     bad decimal string, too many
                                                                 decimals, out of range, not an int

    AssertionError
     └── InvariantViolation            a must-hold condition failed; never caught, never swallowed
"""

from __future__ import annotations

from typing import ClassVar

from hammerlock.errors import DomainError

__all__ = [
    "CurrencyMismatch",
    "InvalidAmount",
    "InvariantViolation",
    "MoneyError",
    "UnknownCurrency",
]


class MoneyError(DomainError):
    """Root of the money kernel's anticipated errors. ``code`` is stable."""

    code: ClassVar[str] = "money_error"
    title: ClassVar[str] = "Invalid money value"


class UnknownCurrency(MoneyError):
    """The currency code is not an active ISO 4217 code with minor units (codes are uppercase)."""

    code: ClassVar[str] = "unknown_currency"
    title: ClassVar[str] = "Unknown currency"


class CurrencyMismatch(MoneyError):
    """Two amounts in different currencies were added, subtracted or compared."""

    code: ClassVar[str] = "currency_mismatch"
    title: ClassVar[str] = "Currency mismatch"


class InvalidAmount(MoneyError):
    """An amount is malformed, has more decimals than its currency allows, or is out of range."""

    code: ClassVar[str] = "invalid_amount"
    title: ClassVar[str] = "Invalid amount"


class InvariantViolation(AssertionError):
    """A condition that must always hold did not. This is a bug in our code: crash loudly.

    Unlike ``assert``, the check that raises it survives ``python -O``.
    """
