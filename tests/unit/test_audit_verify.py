"""The pure parts of proofs and verification, against the plain list-of-leaves reference.

- ``proofs.range_root`` (tiles + leaves) and ``verify.RebuiltTree`` (the verifier's tree) give
  the same subtree roots, heads and proofs as ``merkle`` computes from every leaf;
- ``verify.check_rows``'s fast path never accepts what the exact, slow ``check_event`` refuses,
  and refuses no valid RFC 8785 event (non-ASCII and UTF-16 key order included).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.audit import merkle, proofs
from hammerlock.audit.storage import TILE_SIZE
from hammerlock.audit.verify import RebuiltTree, check_event, check_rows
from hammerlock.clock import format_rfc3339


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(b"%d" % i) for i in range(n)]


def _tiles(leaves: list[bytes]) -> dict[int, bytes]:
    return {
        i: merkle.root_from_leaf_hashes(leaves[i * TILE_SIZE : (i + 1) * TILE_SIZE])
        for i in range(len(leaves) // TILE_SIZE)
    }


# --- proofs from tiles ---------------------------------------------------------------------------


@given(size=st.integers(1, 3 * TILE_SIZE + 40), data=st.data())
def test_range_roots_from_tiles_match_the_leaves(size: int, data: st.DataObject) -> None:
    leaves = _leaves(size)
    tiles, by_seq = _tiles(leaves), dict(enumerate(leaves))
    leaf = data.draw(st.integers(0, size - 1))
    first = data.draw(st.integers(0, size))
    ranges = merkle.inclusion_path_ranges(leaf, size) + merkle.consistency_path_ranges(first, size)
    for start, end in ranges:
        assert proofs.range_root(start, end, tiles, by_seq) == merkle.subtree_root(
            leaves, start, end
        )
    assert proofs.range_root(0, size, tiles, by_seq) == merkle.root_from_leaf_hashes(leaves)


def test_a_range_needs_only_its_tiles_and_its_ragged_tail() -> None:
    assert proofs.range_plan(3, 5) == ((0, 0), (3, 5))
    assert proofs.range_plan(0, 1000) == ((0, 3), (768, 1000))
    assert proofs.range_plan(512, 1024) == ((2, 4), (1024, 1024))
    with pytest.raises(ValueError, match="unaligned"):
        proofs.range_plan(100, 600)
    leaves = _leaves(600)
    tiles = _tiles(leaves)
    del tiles[1]
    with pytest.raises(RuntimeError, match="lacks tile 1"):
        proofs.range_root(0, 600, tiles, dict(enumerate(leaves)))


# --- the verifier's tree -------------------------------------------------------------------------


@given(
    size=st.integers(0, 4 * TILE_SIZE + 50),
    cuts=st.lists(st.integers(0, 4 * TILE_SIZE + 50), max_size=12),
    chunk=st.integers(1, 700),
)
def test_rebuilt_tree_heads_and_consistency_proofs(size: int, cuts: list[int], chunk: int) -> None:
    leaves = _leaves(size)
    heads = sorted({c for c in cuts if c <= size} | {size})
    tree, tiles = RebuiltTree(), {}
    previous, position = None, 0
    for head in heads:
        while position < head:
            step = min(chunk, head - position)
            tree.extend(leaves[position : position + step], tiles.__setitem__)
            position += step
        assert tree.size == head
        assert tree.root() == merkle.root_from_leaf_hashes(leaves[:head])
        if previous is not None:
            expected = merkle.consistency_proof(previous, head, leaves)
            assert merkle.consistency_proof(previous, head, tree.range_root) == expected
        tree.forget()
        if head:
            tree.keep_block((head - 1) // TILE_SIZE)
        previous = head
    assert tiles == _tiles(leaves)
    reference = merkle.CompactTree()
    reference.extend(leaves)
    assert tree.state() == reference.to_state()


# --- rows ----------------------------------------------------------------------------------------

TS_US = 1_767_225_600_123_456


def _event(seq: int = 7, **details: Any) -> dict[str, Any]:
    return {
        "event_id": f"evt_{seq}",
        "ts": format_rfc3339(TS_US),
        "actor": {"principal_id": "prn_1", "role": "auditor", "key_id": "key_1"},
        "action": "audit.events.read",
        "resource": {"type": "audit_log", "id": None},
        "outcome": {"status": "success", "code": None},
        "origin": {"ip": "127.0.0.1", "user_agent": "t", "node": "n"},
        "request_id": None,
        "details": details,
        "seq": seq,
    }


def _row(event: dict[str, Any], text: bytes | None = None, seq: int = 7) -> tuple[Any, ...]:
    body = rfc8785.dumps(event) if text is None else text
    return (
        seq,
        body.decode(),
        hashlib.sha256(b"\x00" + body).hexdigest(),
        event["event_id"],
        TS_US,
        event["action"],
        event["actor"]["principal_id"],
        event["resource"]["type"],
        event["resource"]["id"],
    )


def _problems(row: tuple[Any, ...]) -> list[str]:
    _, problems, _ = check_rows([row], row[0])
    return [p.message for p in problems]


def test_valid_events_pass_the_fast_and_the_exact_path() -> None:
    for event in (
        _event(count=3, ok=True, none=None, nested={"list": [1, "x", {"y": -(2**53 - 1)}]}),
        _event(text="caf\u00e9 \U0001f600 \u2028 \x7f"),  # non-ASCII: the exact path
        _event(**{"\ue000": 1, "\U0001f600": 2}),  # UTF-16 order differs from code points
    ):
        row = _row(event)
        assert check_event(row) is None
        assert _problems(row) == []


def test_what_the_fast_path_must_not_accept() -> None:
    utf16_order = _event(**{"\ue000": 1, "\U0001f600": 2})
    code_point_order = orjson.dumps(utf16_order, option=orjson.OPT_SORT_KEYS)
    assert code_point_order != rfc8785.dumps(utf16_order)
    valid = rfc8785.dumps(_event(n=1)).decode()
    cases = {
        "code point key order": (code_point_order, utf16_order, "RFC 8785"),
        "a float written 1.0": (valid.replace('"n":1', '"n":1.0').encode(), _event(n=1), "float"),
        "a float": (valid.replace('"n":1', '"n":1.5').encode(), _event(n=1), "float"),
        "an unsafe integer": (
            valid.replace('"n":1', f'"n":{2**53}').encode(),
            _event(n=1),
            "outside",
        ),
        "a space": (valid.replace('"n":1', '"n": 1').encode(), _event(n=1), "RFC 8785"),
        "a duplicate key": (valid.replace('"n":1', '"n":1,"n":1').encode(), _event(n=1), "8785"),
        "an escaped slash": (
            valid.replace('"audit_log"', '"audit\\/log"').encode(),
            _event(n=1),
            "RFC 8785",
        ),
        "an extra field": (rfc8785.dumps({**_event(n=1), "x": 1}), _event(n=1), "schema v1"),
        "a number for a string": (
            valid.replace('"request_id":null', '"request_id":5').encode(),
            _event(n=1),
            "request_id",
        ),
        "another seq inside": (valid.replace('"seq":7', '"seq":8').encode(), _event(n=1), "seq 8"),
        "not JSON": (valid[:-1].encode(), _event(n=1), "not JSON"),
    }
    for name, (text, event, words) in cases.items():
        row = _row(event, text)
        problem = check_event(row)
        assert problem is not None, name
        assert words in problem, (name, problem)
        assert len(_problems(row)) == 1, name


def test_index_columns_and_the_sequence() -> None:
    event = _event(n=1)
    row = _row(event)
    for index, column, value in (
        (3, "event_id", "evt_other"),
        (4, "ts_us", TS_US + 1),
        (5, "action", "x"),
        (6, "actor_id", None),
        (7, "resource_type", "y"),
        (8, "resource_id", "z"),
    ):
        changed = (*row[:index], value, *row[index + 1 :])
        [problem] = _problems(changed)
        assert problem.startswith(f"column {column} ({value!r}) disagrees with the event ("), (
            problem
        )
    bad_hash = (*row[:2], "00" * 32, *row[3:])
    assert _problems(bad_hash) == ["leaf_hash is not SHA-256(0x00 ‖ canonical)"]
    _, problems, following = check_rows([row], 5)
    assert [str(p) for p in problems] == ["seq 5: missing (no row for seq 5..6)"]
    assert following == 8
