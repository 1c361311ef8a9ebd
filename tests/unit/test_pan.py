"""Card number detection, masking and redaction (log redaction and the PAN firewall rely on it)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hammerlock.security.pan import (
    card_brand,
    contains_pan,
    find_pans,
    fold_digits,
    is_pan,
    luhn_valid,
    mask_pan,
    redact_pans,
)
from tests.strategies import (
    branded_card_numbers,
    card_numbers,
    luhn_check_digit,
    separated_card_numbers,
    text_without_digits,
)

TEST_CARDS = [
    ("4242424242424242", "visa"),
    ("4000056655665556", "visa"),
    ("4222222222222", "visa"),  # 13 digits
    ("5555555555554444", "mastercard"),
    ("2223003122003222", "mastercard"),  # 2-series
    ("378282246310005", "amex"),
    ("371449635398431", "amex"),
    ("6011111111111117", "discover"),
    ("6011000990139424", "discover"),
    ("3530111333300000", "jcb"),
    ("3566002020360505", "jcb"),
    ("36227206271667", "diners"),  # 14 digits
    ("3056930009020004", "diners"),
    ("6200000000000005", "unionpay"),
    ("6759649826438453", "maestro"),
]


@pytest.mark.parametrize(("pan", "brand"), TEST_CARDS)
def test_test_cards_are_pans_of_their_brand(pan: str, brand: str) -> None:
    assert luhn_valid(pan)
    assert card_brand(pan) == brand
    assert is_pan(pan)


@pytest.mark.parametrize(("pan", "brand"), TEST_CARDS)
def test_test_cards_with_separators(pan: str, brand: str) -> None:
    grouped = " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))
    assert is_pan(grouped), brand
    assert is_pan(grouped.replace(" ", "-"))
    assert find_pans(f"card: {grouped}.") == [(6, 6 + len(grouped))]


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        ("1234567812345670", "Luhn-valid but no brand starts with 1"),
        ("4242424242424241", "visa-like but fails Luhn"),
        ("4242424242424", "13 digits, fails Luhn"),
        ("42424242424242", "visa has no 14-digit numbers"),
        ("5555555555554", "mastercard is 16 digits only"),
        ("0000000000000000", "Luhn-valid zeros"),
        ("4242  4242 4242 4242", "double space"),
        ("4242--4242-4242-4242", "double dash"),
        ("4242.4242.4242.4242", "dots are not separators"),
        ("4242_4242_4242_4242", "underscores are not separators"),
        (" 4242424242424242", "leading space"),
        ("4242424242424242-", "trailing dash"),
        ("", "empty"),
        ("\uff14\uff12\uff14\uff12" * 4, "full-width digits are not ASCII digits"),
        ("42424242424242424242", "20 digits"),
    ],
)
def test_not_pans(candidate: str, why: str) -> None:
    assert not is_pan(candidate), why


@pytest.mark.parametrize(
    ("digits", "brand"),
    [
        ("5105105105105100", "mastercard"),
        ("2720990000000007", "mastercard"),
        ("2221000000000009", "mastercard"),
        ("2200000000000004", "mir"),
        ("6221260000000000", "discover"),  # co-branded range beats UnionPay's 62
        ("6229250000000009", "discover"),
        ("6221250000000001", "unionpay"),  # just below Discover's range
        ("6440000000000000", "discover"),
        ("6500000000000002", "discover"),
        ("6011000000000004", "discover"),
        ("601100000000000", "maestro"),  # 15 digits: not Discover, still a Maestro length
        ("3527000000000000", None),  # just below JCB
        ("3590000000000000", None),  # just above JCB
        ("3060000000000000", None),  # not Diners (300-305, 36, 38-39)
        ("2720999999999999", "mastercard"),
        ("2721000000000000", None),
        ("2220999999999999", None),
        ("1234567812345670", None),
        ("", None),
        ("42424242424242a2", None),
    ],
)
def test_card_brand_boundaries(digits: str, brand: str | None) -> None:
    assert card_brand(digits) == brand


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("")
    assert not luhn_valid("4242 4242 4242 4242")
    assert not luhn_valid("\u0664\u0662")  # Arabic-Indic digits


def test_pan_embedded_in_a_longer_digit_run_is_not_found() -> None:
    assert find_pans("id=12344242424242424242;") == []
    assert find_pans("id=42424242424242425;") == []  # 17 digits: no brand fits
    assert not contains_pan("order 990004242424242424242")


def test_pan_between_other_digit_groups_is_found() -> None:
    text = "ref 12 4242-4242-4242-4242 99"
    start = text.index("4242")
    assert find_pans(text) == [(start, start + len("4242-4242-4242-4242"))]


def test_pan_next_to_letters_is_found() -> None:
    assert find_pans("x4242424242424242y") == [(1, 17)]


def test_several_pans() -> None:
    text = "a 4242424242424242 b 5555-5555-5555-4444 c 378282246310005"
    assert [text[s:e] for s, e in find_pans(text)] == [
        "4242424242424242",
        "5555-5555-5555-4444",
        "378282246310005",
    ]


def test_mask_pan() -> None:
    assert mask_pan("4242424242424242") == "424242******4242"
    assert mask_pan("4242 4242 4242 4242") == "424242******4242"
    assert mask_pan("3782-822463-10005") == "378282*****0005"
    assert mask_pan("123456789012") == "123456**9012"


@pytest.mark.parametrize("candidate", ["", "12345678901", "4242 4242 4242 4242 4242", "abc"])
def test_mask_pan_rejects_non_card_numbers_without_echoing_them(candidate: str) -> None:
    with pytest.raises(ValueError, match="not a card number") as caught:
        mask_pan(candidate)
    if candidate:
        assert candidate not in str(caught.value)


def test_redact_a_json_log_line() -> None:
    line = (
        '{"event": "charge.failed", "card": "4242 4242 4242 4242", "amount_minor": 193500, '
        '"order": "ord_12345678901234567890", "note": "retry with 5555-5555-5555-4444", '
        '"ts": 1767225600000000}'
    )
    assert redact_pans(line) == (
        '{"event": "charge.failed", "card": "424242******4242", "amount_minor": 193500, '
        '"order": "ord_12345678901234567890", "note": "retry with 555555******4444", '
        '"ts": 1767225600000000}'
    )
    assert contains_pan(line)
    assert not contains_pan(redact_pans(line))


def test_long_input_is_scanned() -> None:
    text = ("x" * 10_000 + " 1234-5678 ") * 50 + "4242424242424242"
    assert find_pans(text) == [(len(text) - 16, len(text))]


# --- properties ---------------------------------------------------------------------------------


@given(branded_card_numbers())
def test_generated_card_numbers_are_pans(brand_and_pan: tuple[str, str]) -> None:
    brand, pan = brand_and_pan
    assert card_brand(pan) == brand
    assert is_pan(pan)


@given(card_numbers(), st.integers(1, 9))
def test_changing_one_digit_breaks_luhn(pan: str, delta: int) -> None:
    digit = str((int(pan[-1]) + delta) % 10)
    assert not luhn_valid(pan[:-1] + digit)
    assert not is_pan(pan[:-1] + digit)


@given(separated_card_numbers())
def test_separated_card_numbers_are_pans(candidate: str) -> None:
    assert is_pan(candidate)
    assert find_pans(candidate) == [(0, len(candidate))]


@given(text_without_digits(), separated_card_numbers(), text_without_digits())
@example(prefix='{"pan": "', candidate="4242 4242 4242 4242", suffix='"}')
def test_redaction_removes_the_card_number(prefix: str, candidate: str, suffix: str) -> None:
    digits = candidate.replace(" ", "").replace("-", "")
    redacted = redact_pans(prefix + candidate + suffix)
    assert redacted == prefix + mask_pan(candidate) + suffix
    assert digits not in redacted
    assert candidate not in redacted
    assert not contains_pan(redacted)


@given(text_without_digits())
def test_text_without_digits_is_never_changed(text: str) -> None:
    assert redact_pans(text) == text
    assert find_pans(text) == []


@given(st.text(st.sampled_from("0123456789 -x"), max_size=200))
def test_found_spans_are_pans_and_in_order(text: str) -> None:
    spans = find_pans(text)
    previous_end = 0
    for start, end in spans:
        assert previous_end <= start < end
        assert is_pan(text[start:end])
        assert start == 0 or not text[start - 1].isdigit()
        previous_end = end
    assert contains_pan(text) == bool(spans)
    assert len(redact_pans(text)) <= len(text)


@given(st.text("0123456789", min_size=11, max_size=18))
def test_luhn_check_digit_helper(payload: str) -> None:
    assert luhn_valid(payload + luhn_check_digit(payload))


def test_the_digit_groups_of_a_uuid_are_not_a_card_number() -> None:
    # Groups 1-3 read together are 4242424242424242 (Visa, Luhn-valid): still a UUID.
    shaped = "42424242-4242-4242-4242-424242424242"
    assert not contains_pan(shaped)
    assert not contains_pan(f"Idempotency-Key: {shaped}")
    assert find_pans(f"{shaped} and card 4242 4242 4242 4242") == [(46, 65)]
    # Not a UUID (a digit glued on, or too short a group): scanned as usual.
    assert contains_pan("42424242-4242-4242-4242-4242424242421")
    assert contains_pan("4242424242424242-4242-4242-4242-424242424242")


@given(st.uuids())
def test_no_uuid_is_ever_taken_for_a_card_number(value: uuid.UUID) -> None:
    assert not contains_pan(str(value))
    assert not contains_pan(str(value).upper())


@pytest.mark.parametrize(
    "typed",
    [
        "\uff14\uff12" * 8,  # full-width
        "\u0664\u0662" * 8,  # Arabic-Indic
        " ".join(["\u096a\u0968\u096a\u0968"] * 4),  # Devanagari, grouped
        "4242\u00a04242\u00a04242\u00a04242",
        "4242\u20134242\u20134242\u20134242",
        "card \uff14\uff12\uff14\uff12\uff0d4242\uff0d4242\uff0d4242 thanks",
    ],
)
def test_a_card_number_typed_in_other_digits_is_found_once_folded(typed: str) -> None:
    assert not contains_pan(typed)  # the scan itself reads ASCII digits only (documented)
    assert contains_pan(fold_digits(typed))


def test_folding_leaves_ascii_and_other_text_alone() -> None:
    assert fold_digits("order 42, Zoë") == "order 42, Zoë"
    text = "ref 1Z999AA10123456784"
    assert fold_digits(text) is text
