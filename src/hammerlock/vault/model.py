"""Cards as the vault sees them: validation and token metadata. No I/O, no clock.

A number is accepted when, after removing spaces and dashes, it is 12-19 ASCII digits, passes the
Luhn check, and fits a brand's prefix *and* length (:func:`hammerlock.security.pan.card_brand`);
a known prefix with the wrong length is ``invalid_number``, an unknown prefix
``unsupported_brand``. A card is valid through the last day of its expiry month (UTC).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC

from hammerlock.clock import from_us
from hammerlock.security.pan import PAN_LEN_MAX, PAN_LEN_MIN, card_brand, luhn_valid
from hammerlock.vault.errors import InvalidCvc, InvalidExpiry, InvalidNumber, UnsupportedBrand

__all__ = ["MAX_EXPIRY_YEARS", "CardInput", "TokenInfo", "ValidCard", "new_token_id", "validate"]

MAX_EXPIRY_YEARS = 25
_BIN_DIGITS = 6


def new_token_id() -> str:
    return "tok_" + secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class CardInput:
    """What a checkout page posts. ``repr`` never shows the number or CVC."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str | None = None
    name: str | None = None
    address_country: str | None = None

    def __repr__(self) -> str:
        return f"CardInput(exp={self.exp_month:02d}/{self.exp_year}, cvc={self.cvc is not None})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ValidCard:
    number: str  # digits only
    brand: str
    exp_month: int
    exp_year: int
    cvc: str | None
    name: str | None
    address_country: str | None

    def __repr__(self) -> str:
        return (
            f"ValidCard({self.brand} …{self.number[-4:]}, exp={self.exp_month:02d}/{self.exp_year})"
        )

    __str__ = __repr__

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def bin(self) -> str:
        return self.number[:_BIN_DIGITS]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's metadata: everything about a card except the number itself."""

    id: str
    brand: str
    last4: str
    bin: str
    exp_month: int
    exp_year: int
    fingerprint: str
    created_us: int
    address_country: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "brand": self.brand,
            "last4": self.last4,
            "bin": self.bin,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
            "fingerprint": self.fingerprint,
        }


def _digits(number: str) -> str:
    digits = number.replace(" ", "").replace("-", "")
    if not (digits.isascii() and digits.isdigit()) or not PAN_LEN_MIN <= len(digits) <= PAN_LEN_MAX:
        raise InvalidNumber(f"a card number is {PAN_LEN_MIN} to {PAN_LEN_MAX} digits")
    return digits


def _brand(digits: str) -> str:
    brand = card_brand(digits)
    if brand is not None:
        return brand
    prefix = digits[:_BIN_DIGITS]
    if any(card_brand(prefix.ljust(n, "0")) for n in range(PAN_LEN_MIN, PAN_LEN_MAX + 1)):
        raise InvalidNumber("the card number has the wrong length for its brand")
    raise UnsupportedBrand("the card's brand is not one this vault accepts")


def _check_expiry(exp_month: int, exp_year: int, now_us: int) -> None:
    if not 1 <= exp_month <= 12:
        raise InvalidExpiry("exp_month must be 1 to 12")
    now = from_us(now_us).astimezone(UTC)
    if not now.year <= exp_year <= now.year + MAX_EXPIRY_YEARS:
        raise InvalidExpiry(f"exp_year must be a four-digit year from {now.year}")
    if (exp_year, exp_month) < (now.year, now.month):
        raise InvalidExpiry("the card has expired")


def _check_cvc(cvc: str | None, brand: str) -> None:
    if cvc is None:
        return
    expected = 4 if brand == "amex" else 3
    if len(cvc) != expected or not (cvc.isascii() and cvc.isdigit()):
        raise InvalidCvc(f"a {brand} card's security code is {expected} digits")


def validate(card: CardInput, *, now_us: int) -> ValidCard:
    """The card, checked in a fixed order: number, brand, expiry, CVC."""
    digits = _digits(card.number)
    if not luhn_valid(digits):
        raise InvalidNumber("the card number fails its check digit")
    brand = _brand(digits)
    _check_expiry(card.exp_month, card.exp_year, now_us)
    _check_cvc(card.cvc, brand)
    return ValidCard(
        number=digits,
        brand=brand,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        cvc=card.cvc,
        name=card.name,
        address_country=card.address_country.upper() if card.address_country else None,
    )
