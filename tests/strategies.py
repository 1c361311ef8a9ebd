"""Hypothesis strategies shared by the whole test suite, one delimited section per domain.

Add a new section for a new domain rather than editing another's; keep each section's helpers
private to it (prefix them with the section name or ``_``).
"""

from __future__ import annotations

from hypothesis import strategies as st

from hammerlock.money import ISO_4217_EXPONENTS, MAX_API_AMOUNT, Money, Rounding

# ================================================================================================
# SECTION money: strategies for hammerlock.money
# ================================================================================================

CURRENCY_CODES = sorted(ISO_4217_EXPONENTS)


def currency_codes() -> st.SearchStrategy[str]:
    """Generate any code in the ISO 4217 table."""
    return st.sampled_from(CURRENCY_CODES)


def unknown_currency_codes() -> st.SearchStrategy[str]:
    """Generate strings outside the table: lowercase, mixed case, wrong length, non-ASCII."""
    return st.text(max_size=6).filter(lambda code: code not in ISO_4217_EXPONENTS)


def roundings() -> st.SearchStrategy[Rounding]:
    return st.sampled_from(Rounding)


def money(
    currency: str | None = None,
    *,
    min_minor: int = -MAX_API_AMOUNT,
    max_minor: int = MAX_API_AMOUNT,
) -> st.SearchStrategy[Money]:
    """Generate amounts in one ``currency`` (any if ``None``), signed, within the API range."""
    codes = currency_codes() if currency is None else st.just(currency)
    return st.builds(Money, st.integers(min_minor, max_minor), codes)


def api_money(currency: str | None = None) -> st.SearchStrategy[Money]:
    """Generate amounts that may cross the API: 0 to ``MAX_API_AMOUNT`` minor units."""
    return money(currency, min_minor=0)


@st.composite
def same_currency_money(draw: st.DrawFn, count: int) -> list[Money]:
    """Generate ``count`` signed amounts that share one currency."""
    currency = draw(currency_codes())
    return [draw(money(currency)) for _ in range(count)]


def allocation_weights(max_size: int = 50) -> st.SearchStrategy[list[int]]:
    """Generate lists of non-negative weights with a positive sum, zeros included on purpose."""
    weight = st.one_of(st.just(0), st.integers(1, 10), st.integers(0, 10**9))
    return st.lists(weight, min_size=1, max_size=max_size).filter(lambda ws: sum(ws) > 0)


def basis_points() -> st.SearchStrategy[int]:
    """Generate 0% to 100% in basis points, with the edges drawn often."""
    return st.one_of(st.sampled_from([0, 1, 9_999, 10_000]), st.integers(0, 10_000))


# ================================================================================================
# SECTION security.pan: strategies for hammerlock.security.pan
# ================================================================================================

# (brand, prefixes, lengths). Written out independently of pan.py's table, and narrowed so that
# a generated number cannot fall into a more specific brand's range (e.g. Maestro's 56-69 and
# UnionPay's 62 both contain Discover ranges, so those prefixes avoid them).
_PAN_BRANDS: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    ("visa", ("4",), (13, 16, 19)),
    ("mastercard", ("51", "52", "53", "54", "55", "2221", "2500", "2720"), (16,)),
    ("amex", ("34", "37"), (15,)),
    ("discover", ("6011", "622126", "622500", "622925", "644", "649", "65"), (16, 17, 18, 19)),
    ("jcb", ("3528", "3550", "3589"), (16, 17, 18, 19)),
    ("diners", ("300", "305", "36", "38", "39"), (14, 15, 16, 17, 18, 19)),
    ("unionpay", ("620", "621", "623", "628", "629"), (16, 17, 18, 19)),
    ("maestro", ("50", "56", "57", "58", "63", "67"), tuple(range(12, 20))),
    ("mir", ("2200", "2204"), (16, 17, 18, 19)),
)

PAN_BRANDS = tuple(brand for brand, _, _ in _PAN_BRANDS)


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # digit -> digit sum of twice the digit


def luhn_check_digit(payload: str) -> str:
    """Return the digit that makes ``payload + digit`` pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(payload)):
        # Doubled positions are the even ones here, counted before the check digit is appended.
        total += _LUHN_DOUBLED[int(char)] if position % 2 == 0 else int(char)
    return str((10 - total % 10) % 10)


@st.composite
def branded_card_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """Generate ``(brand, pan)``: a known prefix, random digits and a correct Luhn check digit."""
    brand, prefixes, lengths = draw(st.sampled_from(_PAN_BRANDS))
    prefix = draw(st.sampled_from(prefixes))
    length = draw(st.sampled_from(lengths))
    body_len = length - 1 - len(prefix)
    payload = prefix + draw(st.text("0123456789", min_size=body_len, max_size=body_len))
    return brand, payload + luhn_check_digit(payload)


def card_numbers() -> st.SearchStrategy[str]:
    """Generate valid, branded, Luhn-correct card numbers (digits only)."""
    return branded_card_numbers().map(lambda pair: pair[1])


@st.composite
def separated_card_numbers(draw: st.DrawFn) -> str:
    """Generate a card number split into groups by single spaces or dashes, as people type them."""
    digits = draw(card_numbers())
    cuts = draw(st.sets(st.integers(1, len(digits) - 1), max_size=len(digits) - 1))
    separators = draw(st.lists(st.sampled_from(" -"), min_size=len(cuts), max_size=len(cuts)))
    pieces: list[str] = []
    start = 0
    for cut, separator in zip(sorted(cuts), separators, strict=True):
        pieces += [digits[start:cut], separator]
        start = cut
    return "".join([*pieces, digits[start:]])


def text_without_digits() -> st.SearchStrategy[str]:
    """Generate text without ASCII digits (other Unicode digits are not card digits)."""
    return st.text(st.characters(exclude_characters="0123456789"))
