"""Random ids: the alphabet, the length, no modulo bias, never a card-number-like run."""

from __future__ import annotations

import collections
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hammerlock import ids
from hammerlock.security.keys import new_key_id
from hammerlock.security.pan import contains_pan


@given(st.integers(min_value=0, max_value=64))
def test_random_text_has_the_length_and_only_the_alphabet(length: int) -> None:
    text = ids.random_text(length)
    assert len(text) == length
    assert set(text) <= set(ids.ID_ALPHABET)


def test_bytes_past_the_last_whole_alphabet_are_thrown_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 31 characters: 248 = 8 * 31 is the limit; 248..255 would favour the first 8 characters.
    feed = iter([bytes([248, 255, 31, 250, 30, 0, 0, 0, 0]), bytes([5, 5, 5, 5])])
    monkeypatch.setattr(ids.secrets, "token_bytes", lambda _n: next(feed))
    a = ids.ID_ALPHABET
    assert ids.random_text(3) == a[0] + a[30] + a[0]
    feed = iter([bytes([255] * 4), bytes([1, 2, 3, 4])])
    assert ids.random_text(2) == a[1] + a[2]  # a read of only refused bytes: read again


def test_every_character_turns_up_about_equally() -> None:
    counts = collections.Counter(ids.random_text(62_000))
    assert set(counts) == set(ids.ID_ALPHABET)
    assert all(1_600 < n < 2_400 for n in counts.values())  # 2,000 each expected
    # A plain `byte % 31` would favour the first 8 characters (256 = 8 * 31 + 8): ~17,440 of
    # them instead of 16,000, 13 standard deviations (~110) off; ±600 is 5.5 of them.
    first_eight = sum(counts[c] for c in ids.ID_ALPHABET[:8])
    assert 15_400 < first_eight < 16_600


def test_a_card_number_like_candidate_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    a = ids.ID_ALPHABET
    digits = [a.index(d) for d in "4242424242424242"]
    feed = iter([bytes(digits + [0, 0, 0, 0] + [0] * 10), bytes(range(30))])
    monkeypatch.setattr(ids.secrets, "token_bytes", lambda _n: next(feed))
    made = ids.random_id("bid")
    assert made == "bid_" + a[:20]
    assert not contains_pan(made)


def test_other_alphabets_and_their_limits() -> None:
    assert re.fullmatch(r"key_[a-z0-9]{16}", new_key_id())
    assert ids.random_text(5, "ab") in {
        "".join(p) for p in __import__("itertools").product("ab", repeat=5)
    }
    with pytest.raises(ValueError, match="alphabet"):
        ids.random_text(3, "a")
    with pytest.raises(ValueError, match="alphabet"):
        ids.random_text(3, "x" * 257)
