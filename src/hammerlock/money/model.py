"""Money as integer minor units, with integer-only rounding, allocation and fee rules.

An amount is ``Money(minor, currency)``: ``minor`` is a count of the currency's minor unit (cents
for USD, yen for JPY, fils for KWD). Nothing here ever holds a float; ``Decimal`` is not used
either: parsing and formatting are plain string handling, and every division goes through
:func:`round_ratio` with an explicit :class:`Rounding` mode.

``Money`` itself allows negative amounts, because ledger deltas are signed. Boundaries where a
negative amount is meaningless reject it: :meth:`Money.parse` by default, :meth:`FeeRule.fee_for`
always.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self, assert_never

from hammerlock.money.currency import get_currency
from hammerlock.money.errors import CurrencyMismatch, InvalidAmount, InvariantViolation

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BPS_PER_WHOLE",
    "MAX_API_AMOUNT",
    "PARSE_TEXT_LEN_MAX",
    "WEIGHT_COUNT_MAX",
    "FeeRule",
    "Money",
    "Rounding",
    "allocate",
    "round_ratio",
]

MAX_API_AMOUNT: Final = 2**53 - 1
"""The largest absolute amount, in minor units, that crosses the API (exact in a JSON double)."""

PARSE_TEXT_LEN_MAX: Final = 64
"""The longest decimal string :meth:`Money.parse` reads; longer input is rejected unread."""

BPS_PER_WHOLE: Final = 10_000
"""Basis points in 100%."""

WEIGHT_COUNT_MAX: Final = 10_000
"""The most parts :func:`allocate` splits an amount into."""

# ASCII digits only (``\d`` would accept Arabic-Indic and other Unicode digits). A sign is only
# ever '-'; digits are required on both sides of a decimal point; no exponent, no whitespace.
_DECIMAL_RE: Final = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")


class Rounding(enum.Enum):
    """How a fractional number of minor units becomes a whole one. Always chosen explicitly.

    The names and meanings match :mod:`decimal`'s ``ROUND_*`` constants of the same name.
    """

    HALF_UP = "half_up"
    """To nearest; ties away from zero (2.5 -> 3, -2.5 -> -3)."""
    HALF_EVEN = "half_even"
    """To nearest; ties to the even neighbour (2.5 -> 2, 3.5 -> 4), the banker's rounding."""
    DOWN = "down"
    """Toward zero (2.7 -> 2, -2.7 -> -2)."""
    UP = "up"
    """Away from zero (2.1 -> 3, -2.1 -> -3)."""
    FLOOR = "floor"
    """Toward negative infinity (2.7 -> 2, -2.1 -> -3)."""
    CEILING = "ceiling"
    """Toward positive infinity (2.1 -> 3, -2.7 -> -2)."""


_ROUNDINGS: Final = frozenset(Rounding)
_HALF_MODES: Final = frozenset({Rounding.HALF_UP, Rounding.HALF_EVEN})


def round_ratio(n: int, d: int, mode: Rounding) -> int:
    """Round the rational ``n / d`` to an integer with ``mode``, using integers only.

    ``d`` must be positive; ``n`` may be negative. A ``d`` that is not positive is a bug in the
    caller and raises :class:`ValueError`.
    """
    if d <= 0:
        msg = f"denominator must be positive, got {d}"
        raise ValueError(msg)
    floor, remainder = divmod(n, d)  # floor = floor(n / d), 0 <= remainder < d
    if remainder == 0:
        return floor
    return floor + 1 if _rounds_to_ceiling(mode, n, 2 * remainder - d, floor) else floor


def _rounds_to_ceiling(mode: Rounding, n: int, twice_remainder_minus_d: int, floor: int) -> bool:
    """Whether an inexact ``n / d``, strictly between ``floor`` and ``floor + 1``, rounds up.

    ``twice_remainder_minus_d`` is negative below the midpoint, zero on it, positive above it.
    """
    if mode in _HALF_MODES and twice_remainder_minus_d != 0:
        return twice_remainder_minus_d > 0
    positive = n > 0  # for a positive n the ceiling is away from zero
    match mode:
        case Rounding.FLOOR:
            return False
        case Rounding.CEILING:
            return True
        case Rounding.DOWN:
            return not positive
        case Rounding.UP | Rounding.HALF_UP:  # a HALF_UP tie goes away from zero
            return positive
        case Rounding.HALF_EVEN:  # a tie goes to the even neighbour
            return floor % 2 == 1
        case _:
            assert_never(mode)


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: ``minor`` units of ``currency``'s minor unit.

    Arithmetic and ordering work only within one currency and raise :class:`CurrencyMismatch`
    otherwise; ``==`` across currencies is simply ``False``. There is no multiplication: scale
    with :meth:`multiply_ratio` or :meth:`apply_bps`, which take an explicit rounding mode.
    """

    minor: int
    currency: str

    def __post_init__(self) -> None:
        # ``bool`` is an ``int``; a float or Decimal here is a bug upstream: refuse both.
        if type(self.minor) is not int:
            msg = f"minor must be an int, got {type(self.minor).__name__}"
            raise InvalidAmount(msg)
        get_currency(self.currency)

    @classmethod
    def of(cls, minor: int, currency: str) -> Self:
        """``Money.of(1999, "USD")`` is 19.99 USD."""
        return cls(minor, currency)

    @classmethod
    def zero(cls, currency: str) -> Self:
        """No money in ``currency``."""
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str, currency: str, *, allow_negative: bool = False) -> Self:
        """Parse a plain decimal string such as ``"193500.00"``, ``"12"`` or ``"0.5"``.

        Accepted: ASCII digits with an optional ``.`` followed by at least one digit; leading
        zeros; fractional digits beyond the currency's exponent only when they are all zeros
        (``"1.500"`` is 1.50 USD: no value is lost). With ``allow_negative=True``, a leading
        ``-`` (for ledger deltas; ``"-0"`` is zero).

        Rejected with :class:`InvalidAmount`, never rounded: more significant decimals than the
        currency has (``"1.005"`` USD), a leading ``+``, ``-`` unless allowed, whitespace,
        ``"5."`` and ``".5"``, exponents (``"1e3"``), ``NaN``/``Infinity``, thousands separators,
        non-ASCII digits, text longer than :data:`PARSE_TEXT_LEN_MAX`, and amounts beyond
        :data:`MAX_API_AMOUNT` minor units. An unknown currency raises :class:`UnknownCurrency`.
        Error messages never echo the input.
        """
        exponent = get_currency(currency).exponent
        match = _DECIMAL_RE.fullmatch(text) if len(text) <= PARSE_TEXT_LEN_MAX else None
        if match is None:
            msg = "amount must be a plain decimal string such as '12.50'"
            raise InvalidAmount(msg)
        sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
        if sign and not allow_negative:
            msg = "amount must not be negative"
            raise InvalidAmount(msg)
        if fraction[exponent:].strip("0"):
            msg = f"amount has more than {exponent} decimal places, the most {currency} allows"
            raise InvalidAmount(msg)
        minor = int(whole + fraction[:exponent].ljust(exponent, "0"))
        if minor > MAX_API_AMOUNT:
            msg = f"amount exceeds {MAX_API_AMOUNT} minor units"
            raise InvalidAmount(msg)
        return cls(-minor if sign else minor, currency)

    @property
    def exponent(self) -> int:
        """Decimal places of this currency's minor unit (2 for USD)."""
        return get_currency(self.currency).exponent

    def format(self) -> str:
        """Return the amount as a decimal string with exactly ``exponent`` decimals.

        ``"193500.00"`` (USD), ``"500"`` (JPY), ``"1.250"`` (KWD), ``"-3.25"``. The inverse of
        :meth:`parse` for amounts within :data:`MAX_API_AMOUNT`.
        """
        exponent = self.exponent
        sign = "-" if self.minor < 0 else ""
        if exponent == 0:
            return f"{sign}{abs(self.minor)}"
        whole, fraction = divmod(abs(self.minor), 10**exponent)
        return f"{sign}{whole}.{fraction:0{exponent}d}"

    def multiply_ratio(self, numerator: int, denominator: int, rounding: Rounding) -> Money:
        """``self * numerator / denominator``, rounded once with ``rounding``.

        ``denominator`` must be positive (else :class:`ValueError`).
        """
        return Money(round_ratio(self.minor * numerator, denominator, rounding), self.currency)

    def apply_bps(self, bps: int, rounding: Rounding) -> Money:
        """``self * bps / 10_000``, rounded once with ``rounding``; ``bps`` must be >= 0.

        For ``bps <= 10_000`` the result never exceeds ``self`` in absolute value, whatever the
        rounding mode.
        """
        if bps < 0:
            msg = f"bps must not be negative, got {bps}"
            raise ValueError(msg)
        return self.multiply_ratio(bps, BPS_PER_WHOLE, rounding)

    def _same_currency(self, other: Money, operation: str) -> None:
        if other.currency != self.currency:
            msg = f"cannot {operation} {self.currency} and {other.currency}"
            raise CurrencyMismatch(msg)

    def __add__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "add")
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "subtract")
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.minor <= other.minor

    def __gt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.minor > other.minor

    def __ge__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.minor >= other.minor


def allocate(total: Money, weights: Sequence[int]) -> list[Money]:
    """Split ``total`` in proportion to ``weights`` so that the parts sum exactly to ``total``.

    Largest remainder: each part is ``floor(|total| * w / sum(weights))``, and the units left
    over go one each to the parts with the largest remainders, ties to the lower index. So every
    part is within one minor unit of its exact share, and a zero weight gets zero. A negative
    total is allocated as its absolute value, then negated.

    ``weights`` must be 1 to :data:`WEIGHT_COUNT_MAX` non-negative ints with a positive sum; else
    :class:`ValueError` (a bug in the caller).
    """
    _check_weights(weights)
    weight_sum = sum(weights)
    magnitude = abs(total.minor)
    shares = [divmod(magnitude * weight, weight_sum) for weight in weights]
    parts = [floor for floor, _ in shares]
    left_over = magnitude - sum(parts)
    # left_over == sum(remainders) / weight_sum < the number of non-zero remainders.
    by_remainder = sorted(range(len(weights)), key=lambda index: (-shares[index][1], index))
    for index in by_remainder[:left_over]:
        parts[index] += 1
    if sum(parts) != magnitude:
        msg = "allocation parts do not sum to the total"
        raise InvariantViolation(msg)
    sign = -1 if total.minor < 0 else 1
    return [Money(sign * part, total.currency) for part in parts]


def _check_weights(weights: Sequence[int]) -> None:
    if not 1 <= len(weights) <= WEIGHT_COUNT_MAX:
        msg = f"need 1 to {WEIGHT_COUNT_MAX} weights, got {len(weights)}"
        raise ValueError(msg)
    if any(type(weight) is not int or weight < 0 for weight in weights):
        msg = "weights must be non-negative ints"
        raise ValueError(msg)
    if sum(weights) == 0:
        msg = "weights must not all be zero"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class FeeRule:
    """A percentage fee in basis points, rounded once with an explicit mode, with a floor.

    ``fee_for(amount)`` is ``amount * bps / 10_000`` rounded with ``rounding``, raised to
    ``minimum_minor`` if lower, and finally capped at ``amount``: a fee never exceeds what it is
    charged on. Invalid fields raise :class:`ValueError` (rules are configuration, not input).
    """

    bps: int
    rounding: Rounding
    minimum_minor: int = 0

    def __post_init__(self) -> None:
        if type(self.bps) is not int or not 0 <= self.bps <= BPS_PER_WHOLE:
            msg = f"bps must be an int in 0..{BPS_PER_WHOLE}"
            raise ValueError(msg)
        if self.rounding not in _ROUNDINGS:  # a config string such as "half_up" is not enough
            msg = "rounding must be a Rounding member"
            raise TypeError(msg)
        if type(self.minimum_minor) is not int or not 0 <= self.minimum_minor <= MAX_API_AMOUNT:
            msg = f"minimum_minor must be an int in 0..{MAX_API_AMOUNT}"
            raise ValueError(msg)

    def fee_for(self, amount: Money) -> Money:
        """Return the fee on ``amount`` (>= 0, else :class:`InvalidAmount`), in its currency."""
        if amount.minor < 0:
            msg = "a fee is charged on a non-negative amount"
            raise InvalidAmount(msg)
        proportional = amount.apply_bps(self.bps, self.rounding).minor
        fee_minor = min(max(proportional, self.minimum_minor), amount.minor)
        if not 0 <= fee_minor <= amount.minor:
            msg = "fee outside 0..amount"
            raise InvariantViolation(msg)
        return Money(fee_minor, amount.currency)
