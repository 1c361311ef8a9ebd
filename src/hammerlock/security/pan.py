"""Card number (PAN) detection, masking and redaction.

Used by the log redaction processor and by the request firewall that refuses card numbers: no
PAN may reach the marketplace's own servers, logs or database.

A string is a PAN when, after removing single spaces or dashes between digit groups, it is 12 to
19 ASCII digits, passes the Luhn check, and has a known brand's prefix and length (see
:func:`card_brand`). So a Luhn-valid tracking number starting with ``1`` is not a PAN.

:func:`find_pans` looks for PANs inside longer text. A candidate is a run of digit groups joined
by single spaces or dashes, not preceded or followed by another digit; within a run, any
consecutive groups may form the PAN ("ref 12 4242 4242 4242 4242" finds the card), but a PAN is
never cut out of the middle of a longer unbroken digit string, which is some other identifier.
Scanning is linear in the length of the text, whatever its length.

Digit groups wholly inside a canonical UUID (8-4-4-4-12 hex digits) are not read as a card
number: about one random UUID in a thousand would otherwise hold one, and no card is written in
that shape.

Limits, by design: only ASCII digits count (full-width or other Unicode digits are not read as
digits; the request firewall folds them to ASCII first with :func:`fold_digits`, so a card
number typed in full-width digits is refused too), and groups separated by anything other than
one space or one dash (dots, slashes, two spaces, a newline) are separate runs.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from itertools import accumulate
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "PAN_LEN_MAX",
    "PAN_LEN_MIN",
    "card_brand",
    "contains_pan",
    "find_pans",
    "fold_digits",
    "is_pan",
    "luhn_valid",
    "mask_pan",
    "redact_pans",
]

PAN_LEN_MIN: Final = 12
"""Fewest digits in a PAN (ISO/IEC 7812 allows 8, but no brand issues fewer than 12)."""

PAN_LEN_MAX: Final = 19
"""Most digits in a PAN (ISO/IEC 7812)."""

_CANDIDATE_LEN_MAX: Final = 2 * PAN_LEN_MAX - 1  # 19 digits with a separator between each
_MASK_KEEP_FIRST: Final = 6
_MASK_KEEP_LAST: Final = 4

# Digit groups joined by exactly one space or dash. Unambiguous, so matching is linear.
_CANDIDATE_RE: Final = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_RUN_RE: Final = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*")
_GROUP_RE: Final = re.compile(r"[0-9]+")
# PAN_LEN_MIN digits in one run (groups joined by single spaces or dashes): text without this
# has no run long enough to hold a PAN, so the scan below can stop before it starts — one
# regular-expression search instead of a look at every digit run (most text: headers, ids).
_LONG_RUN_RE: Final = re.compile(rf"[0-9](?:[ -]?[0-9]){{{PAN_LEN_MIN - 1}}}")
# A canonical UUID, 8-4-4-4-12 hex digits: one whose groups happen to be all digits can hold a
# Luhn-valid run with a brand's prefix (about one uuid4 in a thousand), yet no card is ever
# written in that shape. Runs wholly inside one are not candidates.
_UUID_RE: Final = re.compile(
    r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"(?![0-9A-Za-z])"
)


@dataclass(frozen=True, slots=True)
class _BrandRule:
    brand: str
    prefix_low: str  # prefix_low and prefix_high have the same number of digits
    prefix_high: str
    lengths: frozenset[int]

    def prefix_matches(self, digits: str) -> bool:
        prefix = digits[: len(self.prefix_low)]
        return len(prefix) == len(self.prefix_low) and self.prefix_low <= prefix <= self.prefix_high


def _lengths(low: int, high: int) -> frozenset[int]:
    return frozenset(range(low, high + 1))


# First match wins: a narrow range must come before any broader range that contains it
# (Discover's 6011, 622126-622925 and 644-649 before UnionPay's 62 and Maestro's 56-69).
_BRAND_RULES: Final = (
    _BrandRule("amex", "34", "34", frozenset({15})),
    _BrandRule("amex", "37", "37", frozenset({15})),
    _BrandRule("diners", "300", "305", _lengths(14, 19)),
    _BrandRule("diners", "36", "36", _lengths(14, 19)),
    _BrandRule("diners", "38", "39", _lengths(14, 19)),
    _BrandRule("jcb", "3528", "3589", _lengths(16, 19)),
    _BrandRule("visa", "4", "4", frozenset({13, 16, 19})),
    _BrandRule("mir", "2200", "2204", _lengths(16, 19)),
    _BrandRule("mastercard", "51", "55", frozenset({16})),
    _BrandRule("mastercard", "2221", "2720", frozenset({16})),
    _BrandRule("discover", "6011", "6011", _lengths(16, 19)),
    _BrandRule("discover", "622126", "622925", _lengths(16, 19)),
    _BrandRule("discover", "644", "649", _lengths(16, 19)),
    _BrandRule("discover", "65", "65", _lengths(16, 19)),
    _BrandRule("unionpay", "62", "62", _lengths(16, 19)),
    _BrandRule("maestro", "50", "50", _lengths(12, 19)),
    _BrandRule("maestro", "56", "69", _lengths(12, 19)),
)

_BRAND_PREFIX_LEN_MAX: Final = max(len(rule.prefix_low) for rule in _BRAND_RULES)

# The same rules, in the same order, keyed by the first digit they accept.
_RULES_BY_FIRST_DIGIT: Final = MappingProxyType(
    {
        digit: tuple(r for r in _BRAND_RULES if r.prefix_low[0] <= digit <= r.prefix_high[0])
        for digit in "0123456789"
    }
)

_DIGIT_VALUES: Final = bytes.maketrans(b"0123456789", bytes(range(10)))
# Luhn doubles every second digit and adds the digits of the product: 7 -> 14 -> 1 + 4 = 5.
_DOUBLED_VALUES: Final = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


class _LuhnSums:
    """Prefix sums that tell whether any slice ``digits[start:end]`` passes Luhn, in O(1)."""

    __slots__ = ("_even_doubled", "_odd_doubled")

    def __init__(self, digits: str) -> None:
        # _even_doubled[k] is the Luhn sum of digits[:k] with the digits at even indexes doubled.
        raw = digits.encode("ascii")
        plain, doubled = raw.translate(_DIGIT_VALUES), raw.translate(_DOUBLED_VALUES)
        even_doubled, odd_doubled = bytearray(plain), bytearray(plain)
        even_doubled[0::2] = doubled[0::2]
        odd_doubled[1::2] = doubled[1::2]
        self._even_doubled = [0, *accumulate(even_doubled)]
        self._odd_doubled = [0, *accumulate(odd_doubled)]

    def valid(self, start: int, end: int) -> bool:
        # The check digit digits[end - 1] is not doubled, the one before it is, and so on: the
        # doubled digits are those whose index has the parity of ``end``.
        sums = self._even_doubled if end % 2 == 0 else self._odd_doubled
        return (sums[end] - sums[start]) % 10 == 0


def _is_ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def luhn_valid(digits: str) -> bool:
    """Whether ``digits`` (ASCII digits only, no separators) passes the Luhn mod-10 check."""
    return _is_ascii_digits(digits) and _LuhnSums(digits).valid(0, len(digits))


def card_brand(digits: str) -> str | None:
    """Name the brand whose prefix range and length fit ``digits`` (ASCII digits), or ``None``.

    Brands: ``visa``, ``mastercard``, ``amex``, ``discover``, ``jcb``, ``diners``, ``unionpay``,
    ``maestro``, ``mir``. The Luhn check is not part of this: see :func:`is_pan`.
    """
    if not _is_ascii_digits(digits):
        return None
    rules = _RULES_BY_FIRST_DIGIT[digits[0]]
    matching = (r.brand for r in rules if len(digits) in r.lengths and r.prefix_matches(digits))
    return next(matching, None)


def _strip_separators(candidate: str) -> str | None:
    """Return the digits of ``candidate`` if it is digit groups joined by single spaces/dashes."""
    if len(candidate) > _CANDIDATE_LEN_MAX or _CANDIDATE_RE.fullmatch(candidate) is None:
        return None
    return candidate.replace(" ", "").replace("-", "")


def is_pan(candidate: str) -> bool:
    """Whether ``candidate`` as a whole is a card number: see the module docstring.

    ``"4242 4242 4242 4242"`` and ``"4242-4242-4242-4242"`` are; ``"1234567812345670"``
    (Luhn-valid, no brand) and ``" 4242424242424242"`` (leading space) are not.
    """
    digits = _strip_separators(candidate)
    return (
        digits is not None
        and PAN_LEN_MIN <= len(digits) <= PAN_LEN_MAX
        and luhn_valid(digits)
        and card_brand(digits) is not None
    )


def _uuid_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _UUID_RE.finditer(text)] if "-" in text else []


def _iter_pan_spans(text: str) -> Iterator[tuple[int, int]]:
    if _LONG_RUN_RE.search(text) is None:
        return iter(())  # every run has fewer than PAN_LEN_MIN digits: no PAN, exactly
    return _scan_pan_spans(text)


def _scan_pan_spans(text: str) -> Iterator[tuple[int, int]]:
    uuids = _uuid_spans(text)
    for run in _RUN_RE.finditer(text):
        if uuids and any(a <= run.start() and run.end() <= b for a, b in uuids):
            continue  # digit groups of a UUID (an Idempotency-Key, say) are not a card number
        chunk = run.group()
        if len(chunk) <= _CANDIDATE_LEN_MAX and is_pan(chunk):
            yield run.span()  # the common case: the whole run is the card number
        elif " " in chunk or "-" in chunk:  # an unbroken digit string is never cut into
            yield from _pans_inside_run(chunk, run.start())


def _pans_inside_run(chunk: str, offset: int) -> Iterator[tuple[int, int]]:
    """Find PANs made of consecutive groups of one run; linear in ``len(chunk)``.

    From the first group on, take the longest PAN that starts at a group and ends at one, then
    go on after it. Every check is O(1): a brand prefix lookup and a Luhn prefix-sum difference.
    """
    digits = chunk.replace(" ", "").replace("-", "")
    if len(digits) < PAN_LEN_MIN:
        return
    group_starts: dict[int, int] = {}  # digit index where a group starts -> its offset in chunk
    group_ends: dict[int, int] = {}  # digit index just past a group -> its offset in chunk
    digit_count = 0
    for group in _GROUP_RE.finditer(chunk):
        group_starts[digit_count] = group.start()
        digit_count += group.end() - group.start()
        group_ends[digit_count] = group.end()
    luhn = _LuhnSums(digits)
    lengths_by_prefix: dict[str, list[int]] = {}  # the brand rules look at 6 digits at most
    resume_at = 0
    for start, chunk_start in group_starts.items():
        if start < resume_at:
            continue
        prefix = digits[start : start + _BRAND_PREFIX_LEN_MAX]
        if prefix not in lengths_by_prefix:
            lengths_by_prefix[prefix] = _pan_lengths(prefix)
        for length in lengths_by_prefix[prefix]:
            end = start + length
            if end in group_ends and luhn.valid(start, end):
                yield offset + chunk_start, offset + group_ends[end]
                resume_at = end
                break


def _pan_lengths(prefix: str) -> list[int]:
    """List the lengths a PAN starting with ``prefix`` may have, by brand, longest first."""
    rules = _RULES_BY_FIRST_DIGIT[prefix[0]]
    return sorted({n for r in rules if r.prefix_matches(prefix) for n in r.lengths}, reverse=True)


def find_pans(text: str) -> list[tuple[int, int]]:
    """Return the ``(start, end)`` spans of the card numbers in ``text``, in order, disjoint.

    ``text[start:end]`` is the card number with its inner separators, e.g. ``"4242 4242 4242
    4242"``. Where two readings overlap, the one that starts first wins, then the longer one.
    """
    return list(_iter_pan_spans(text))


def contains_pan(text: str) -> bool:
    """Whether ``text`` contains a card number anywhere (stops at the first)."""
    return next(_iter_pan_spans(text), None) is not None


def mask_pan(candidate: str) -> str:
    """Return a card number's digits with all but the first 6 and last 4 replaced by ``*``.

    ``"4242 4242 4242 4242"`` -> ``"424242******4242"`` (separators dropped). Raises
    :class:`ValueError`, without echoing the input, unless ``candidate`` is 12-19 digits in
    groups joined by single spaces or dashes; the Luhn check and brand are not required.
    """
    digits = _strip_separators(candidate)
    if digits is None or not PAN_LEN_MIN <= len(digits) <= PAN_LEN_MAX:
        msg = f"not a card number: expected {PAN_LEN_MIN}-{PAN_LEN_MAX} digits"
        raise ValueError(msg)
    hidden = len(digits) - _MASK_KEEP_FIRST - _MASK_KEEP_LAST
    return digits[:_MASK_KEEP_FIRST] + "*" * hidden + digits[-_MASK_KEEP_LAST:]


def redact_pans(text: str) -> str:
    """``text`` with every card number found by :func:`find_pans` replaced by its mask."""
    pieces: list[str] = []
    done = 0
    for start, end in _iter_pan_spans(text):
        pieces.append(text[done:start])
        pieces.append(mask_pan(text[start:end]))
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def fold_digits(text: str) -> str:
    """``text`` with every Unicode decimal digit (full-width U+FF14, Arabic-Indic U+0664…) as
    its ASCII digit and full-width spaces and dashes as ASCII ones: what a card number typed on
    another keyboard reads as. ASCII text is returned as is, at once."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif ch.isdecimal():
            out.append(str(unicodedata.decimal(ch)))
        else:
            out.append(_SEPARATORS.get(ch, ch))
    return "".join(out)


# Spaces and dashes of other scripts and keyboards, read as the ASCII ones.
_SEPARATORS: Final = MappingProxyType(
    {
        **dict.fromkeys("\u00a0\u2007\u202f\u3000", " "),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2212\ufe63\uff0d", "-"),
    }
)
