"""``hammerlock.audit.jcs.canonical_json`` writes exactly what the reference RFC 8785 encoder
writes, on its fast path and off it, for values given directly and for values parsed from JSON
text (the sequencer's case, where floats are found by scanning the text)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.audit.jcs import canonical_json

SAFE = 2**53 - 1
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "a.b", "12:30:45.123456Z", 'q"\\/', "\x00\x1f\x7f", "é", "\U0001f600", ":1.5}", "1e5"]
)
scalars = st.none() | st.booleans() | st.integers(-SAFE, SAFE) | text
floats = st.floats(allow_nan=False, allow_infinity=False)


def json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


objects = st.dictionaries(text, json_values(scalars), max_size=6)
objects_with_floats = st.dictionaries(text, json_values(scalars | floats), max_size=6)


@given(objects)
def test_matches_rfc8785_without_floats(value: dict[str, Any]) -> None:
    expected = rfc8785.dumps(value)
    assert canonical_json(value) == expected
    source = orjson.dumps(value)
    assert canonical_json(orjson.loads(source), parsed_from=source) == expected


@given(objects_with_floats)
def test_matches_rfc8785_with_floats(value: dict[str, Any]) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(rfc8785.CanonicalizationError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected
    source = orjson.dumps(value)
    assert canonical_json(orjson.loads(source), parsed_from=source) == expected


def test_unsafe_integers_and_nan_are_refused_like_rfc8785() -> None:
    for value in ({"n": 2**53}, {"n": float("nan")}, {"n": [float("inf")]}):
        with pytest.raises(rfc8785.CanonicalizationError):
            canonical_json(value)
