"""hammerlock.audit.merkle against published vectors and a naive RFC 9162 reference.

The reference below is written from the RFC's recursive definitions (§2.1.1 MTH, §2.1.3.1 PATH,
§2.1.4.1 PROOF/SUBPROOF) with hashlib directly, sharing no code with the module under test.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.audit.merkle import (
    EMPTY_ROOT,
    MAX_TREE_SIZE,
    CompactTree,
    consistency_path_ranges,
    consistency_proof,
    inclusion_path_ranges,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    sign_tree_head,
    subtree_root,
    tree_head_message,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)

# ------------------------------------------------------------------------------------------------
# Naive reference: RFC 9162 §2.1, recursively, as the RFC words it
# ------------------------------------------------------------------------------------------------


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.lru_cache(maxsize=200_000)  # the tree is append-only: a range's MTH never changes
def naive_mth(entries: tuple[bytes, ...]) -> bytes:
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + naive_mth(entries[:k]) + naive_mth(entries[k:])).digest()


def naive_path(m: int, entries: tuple[bytes, ...]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*naive_path(m, entries[:k]), naive_mth(entries[k:])]
    return [*naive_path(m - k, entries[k:]), naive_mth(entries[:k])]


def naive_proof(m: int, entries: tuple[bytes, ...]) -> list[bytes]:
    return naive_subproof(m, entries, b=True)


def naive_subproof(m: int, entries: tuple[bytes, ...], *, b: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [naive_mth(entries)]
    k = _k(n)
    if m <= k:
        return [*naive_subproof(m, entries[:k], b=b), naive_mth(entries[k:])]
    return [*naive_subproof(m - k, entries[k:], b=False), naive_mth(entries[:k])]


def naive_leaf_hashes(entries: Sequence[bytes]) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + e).digest() for e in entries]


# ------------------------------------------------------------------------------------------------
# Published vectors
# ------------------------------------------------------------------------------------------------

# /work/shared/reference/rfc9162-vectors.json, embedded so the suite needs no file outside the
# repository: RFC 6962 test vectors as published in transparency-dev/merkle testonly/constants.go.
VECTOR_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
VECTOR_ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _hexes(*values: str) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


# transparency-dev/merkle proof/verify_test.go (inclusionProofs, consistencyProofs), over the
# same eight leaves. The Go file numbers leaves from 1; these indices are from 0.
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        _hexes(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _hexes(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _hexes("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _hexes(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        _hexes(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _hexes(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _hexes(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _hexes(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]
VECTOR_LEAF_HASHES = [leaf_hash(d) for d in VECTOR_LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _flip(value: bytes, bit: int = 3, at: int = 0) -> bytes:
    out = bytearray(value)
    out[at] ^= 1 << bit
    return bytes(out)


def test_empty_root_is_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT == VECTOR_ROOTS[0]
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert CompactTree().root() == EMPTY_ROOT


def test_leaf_and_node_hash_are_domain_separated() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert node_hash(left, right) != leaf_hash(left + right)


@pytest.mark.parametrize("size", range(len(VECTOR_ROOTS)))
def test_published_roots(size: int) -> None:
    expected = VECTOR_ROOTS[size]
    assert root_from_leaf_hashes(VECTOR_LEAF_HASHES[:size]) == expected
    tree = CompactTree()
    tree.extend(VECTOR_LEAF_HASHES[:size])
    assert tree.root() == expected
    assert naive_mth(tuple(VECTOR_LEAVES[:size])) == expected  # the reference agrees too


def _inclusion_corruptions(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, Any, Any, Any, Any, Any]]:
    """transparency-dev/merkle corruptInclusionProof, ported: each must fail."""
    probes: list[tuple[str, Any, Any, Any, Any, Any]] = [
        ("index - 1", leaf, index - 1, size, proof, root),
        ("index + 1", leaf, index + 1, size, proof, root),
        ("index ^ 2", leaf, index ^ 2, size, proof, root),
        ("size * 2", leaf, index, size * 2, proof, root),
        ("size / 2", leaf, index, size // 2, proof, root),
        ("wrong leaf", b"WrongLeaf", index, size, proof, root),
        ("wrong leaf, right length", _flip(leaf), index, size, proof, root),
        ("empty root", leaf, index, size, proof, EMPTY_ROOT),
        ("random root", leaf, index, size, proof, SOME_HASH),
        ("trailing garbage", leaf, index, size, [*proof, b""], root),
        ("trailing root", leaf, index, size, [*proof, root], root),
        ("preceding garbage", leaf, index, size, [b"", *proof], root),
        ("preceding root", leaf, index, size, [root, *proof], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = _flip(bad[i])
        probes.append((f"proof[{i}] bit 3", leaf, index, size, bad, root))
    if proof:
        probes.append(("removed component", leaf, index, size, proof[:-1], root))
    if len(proof) > 1:
        inserted = [proof[0], SOME_HASH, *proof[1:]]
        probes.append(("inserted component", leaf, index, size, inserted, root))
    return probes


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION_VECTORS)
def test_published_inclusion_proofs(index: int, size: int, expected: list[bytes]) -> None:
    assert inclusion_proof(index, size, VECTOR_LEAF_HASHES) == expected
    root, leaf = VECTOR_ROOTS[size], VECTOR_LEAF_HASHES[index]
    assert verify_inclusion(leaf, index, size, expected, root)
    for desc, *args in _inclusion_corruptions(index, size, expected, root, leaf):
        assert verify_inclusion(*args) is False, desc


def _consistency_corruptions(
    first: int, second: int, proof: list[bytes], root1: bytes, root2: bytes
) -> list[tuple[str, Any, Any, Any, Any, Any]]:
    """transparency-dev/merkle corruptConsistencyProof, ported: each must fail."""
    probes: list[tuple[str, Any, Any, Any, Any, Any]] = [
        ("first - 1", first - 1, second, root1, root2, proof),
        ("first + 1", first + 1, second, root1, root2, proof),
        ("first ^ 2", first ^ 2, second, root1, root2, proof),
        ("second * 2", first, second * 2, root1, root2, proof),
        ("second / 2", first, second // 2, root1, root2, proof),
        ("wrong root1", first, second, b"WrongRoot", root2, proof),
        ("wrong root2", first, second, root1, b"WrongRoot", proof),
        ("flipped root1", first, second, _flip(root1), root2, proof),
        ("flipped root2", first, second, root1, _flip(root2), proof),
        ("swapped roots", first, second, root2, root1, proof),
        ("empty proof", first, second, root1, root2, []),
        ("trailing garbage", first, second, root1, root2, [*proof, b""]),
        ("trailing root1", first, second, root1, root2, [*proof, root1]),
        ("trailing root2", first, second, root1, root2, [*proof, root2]),
        ("preceding garbage", first, second, root1, root2, [b"", *proof]),
        ("preceding root1", first, second, root1, root2, [root1, *proof]),
        ("preceding root2", first, second, root1, root2, [root2, *proof]),
        ("preceding proof[0]", first, second, root1, root2, [proof[0], *proof]),
        ("truncated", first, second, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = _flip(bad[i], bit=4)
        probes.append((f"proof[{i}] bit 4", first, second, root1, root2, bad))
    return probes


@pytest.mark.parametrize(("first", "second", "expected"), CONSISTENCY_VECTORS)
def test_published_consistency_proofs(first: int, second: int, expected: list[bytes]) -> None:
    assert consistency_proof(first, second, VECTOR_LEAF_HASHES) == expected
    root1, root2 = VECTOR_ROOTS[first], VECTOR_ROOTS[second]
    assert verify_consistency(first, second, root1, root2, expected)
    if not expected:  # as upstream: only non-trivial proofs are corrupted
        return
    for desc, *args in _consistency_corruptions(first, second, expected, root1, root2):
        assert verify_consistency(*args) is False, desc


# transparency-dev TestVerifyConsistency's edge table. Roots that are not 32 bytes ("don't care")
# are replaced by real-looking ones, and first == 0 requires first_root == EMPTY_ROOT here, where
# upstream accepts any first_root (a root that is not MTH({}) is no tree of size 0).
_R1, _R2 = leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2")


@pytest.mark.parametrize(
    ("first", "second", "root1", "root2", "proof", "ok"),
    [
        (0, 0, _R1, _R2, [], False),
        (1, 1, _R1, _R2, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 1, EMPTY_ROOT, _R2, [], True),
        (0, 1, _R1, _R2, [], False),  # upstream: True
        (1, 1, _R2, _R2, [], True),
        (1, 0, _R1, _R2, [], False),  # time travel
        (2, 1, _R1, _R2, [], False),
        (1, 2, _R1, _R2, [], False),  # empty proof
        (0, 0, EMPTY_ROOT, _R2, [], False),
        (1, 1, EMPTY_ROOT, _R2, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),  # roots match, proof not empty
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    ],
)
def test_consistency_edge_cases(
    first: int, second: int, root1: bytes, root2: bytes, proof: list[bytes], *, ok: bool
) -> None:
    assert verify_consistency(first, second, root1, root2, proof) is ok


@pytest.mark.parametrize(
    ("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)], ids=["0-0", "0-1", "1-0", "2-1"]
)
def test_inclusion_edge_cases(index: int, size: int) -> None:
    # transparency-dev TestVerifyInclusion: an empty proof never proves SOME_HASH into EMPTY_ROOT
    assert verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT) is False
    assert verify_inclusion(SOME_HASH, index, size, [], b"") is False
    assert verify_inclusion(b"", index, size, [], EMPTY_ROOT) is False


def test_a_path_longer_than_the_tree_is_tall_fails_even_against_a_matching_root() -> None:
    # RFC 9162 §2.1.3.2 step 4a and §2.1.4.2 step 6a ("if sn is 0 ... fail"): without them one
    # extra element would verify against the root of a taller tree, H(0x01 || extra || root).
    index, size, proof = INCLUSION_VECTORS[2]
    leaf, root = VECTOR_LEAF_HASHES[index], VECTOR_ROOTS[size]
    taller = node_hash(SOME_HASH, root)
    assert not verify_inclusion(leaf, index, size, [*proof, SOME_HASH], taller)
    first, second, proof = CONSISTENCY_VECTORS[2]
    root1, root2 = VECTOR_ROOTS[first], VECTOR_ROOTS[second]
    # once sn is 0, fn is too, so an extra element would fold into both roots
    assert not verify_consistency(
        first,
        second,
        node_hash(SOME_HASH, root1),
        node_hash(SOME_HASH, root2),
        [*proof, SOME_HASH],
    )


def test_single_leaf_tree_root_is_its_leaf_hash() -> None:
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], h)


# ------------------------------------------------------------------------------------------------
# Exhaustive over small trees: every proof of every size up to 40 equals the reference and checks
# ------------------------------------------------------------------------------------------------

_SMALL = tuple(i.to_bytes(2, "big") for i in range(40))
_SMALL_HASHES = naive_leaf_hashes(_SMALL)


def test_every_small_inclusion_proof() -> None:
    for size in range(1, len(_SMALL) + 1):
        root = naive_mth(_SMALL[:size])
        for index in range(size):
            proof = inclusion_proof(index, size, _SMALL_HASHES)
            assert proof == naive_path(index, _SMALL[:size]), (index, size)
            assert verify_inclusion(_SMALL_HASHES[index], index, size, proof, root)


def test_every_small_consistency_proof() -> None:
    for second in range(len(_SMALL) + 1):
        root2 = naive_mth(_SMALL[:second])
        for first in range(second + 1):
            root1 = naive_mth(_SMALL[:first])
            proof = consistency_proof(first, second, _SMALL_HASHES)
            if 0 < first < second:
                assert proof == naive_proof(first, _SMALL[:second]), (first, second)
            else:
                assert proof == [], (first, second)
            assert verify_consistency(first, second, root1, root2, proof), (first, second)


# ------------------------------------------------------------------------------------------------
# Properties against the reference
# ------------------------------------------------------------------------------------------------

entries_lists = st.lists(st.binary(max_size=6), max_size=300).map(tuple)


@st.composite
def distinct_logs(draw: st.DrawFn, min_size: int = 1, max_size: int = 300) -> tuple[bytes, ...]:
    """Distinct entries, so that no proof element equals another subtree by accident."""
    size = draw(st.integers(min_size, max_size))
    salt = draw(st.binary(max_size=4))
    return tuple(salt + i.to_bytes(2, "big") for i in range(size))


@given(entries_lists)
def test_root_equals_reference(entries: tuple[bytes, ...]) -> None:
    hashes = naive_leaf_hashes(entries)
    expected = naive_mth(entries)
    assert root_from_leaf_hashes(hashes) == expected
    assert subtree_root(hashes, 0, len(hashes)) == expected


@given(entries_lists, st.data())
def test_compact_tree_matches_reference_after_every_append(
    entries: tuple[bytes, ...], data: st.DataObject
) -> None:
    tree = CompactTree()
    restart_at = data.draw(st.integers(0, len(entries)), label="restart_at")
    for count, entry in enumerate(entries, start=1):
        tree.append(leaf_hash(entry))
        assert tree.size == count
        assert tree.root() == naive_mth(entries[:count])
        if count == restart_at:  # a sequencer restart: persist, resume, carry on
            state = tree.to_state()
            assert len(state) == count.bit_count()
            tree = CompactTree.from_state(count, state)
            assert tree.root() == naive_mth(entries[:count])


@given(entries_lists, st.data())
def test_state_round_trip_at_any_size(entries: tuple[bytes, ...], data: st.DataObject) -> None:
    tree = CompactTree()
    tree.extend(naive_leaf_hashes(entries))
    resumed = CompactTree.from_state(tree.size, tree.to_state())
    assert resumed.size == tree.size
    assert resumed.root() == tree.root() == naive_mth(entries)
    more = data.draw(st.lists(st.binary(max_size=4), max_size=20), label="more")
    resumed.extend(naive_leaf_hashes(more))
    assert resumed.root() == naive_mth(entries + tuple(more))


@given(entries_lists, st.data())
def test_bulk_extend_equals_single_appends(entries: tuple[bytes, ...], data: st.DataObject) -> None:
    hashes = naive_leaf_hashes(entries)
    one_by_one = CompactTree()
    for h in hashes:
        one_by_one.append(h)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(hashes)), max_size=6), label="cuts"))
    in_chunks = CompactTree()
    for start, end in zip([0, *cuts], [*cuts, len(hashes)], strict=True):
        in_chunks.extend(iter(hashes[start:end]))  # any iterable, not only lists
    assert in_chunks.size == one_by_one.size == len(entries)
    assert in_chunks.to_state() == one_by_one.to_state()
    assert in_chunks.root() == one_by_one.root()


@given(st.integers(0, 6), st.integers(0, 5), st.integers(0, 40), st.binary(max_size=4))
def test_append_subtree_equals_appending_its_leaves(
    level: int, blocks_before: int, tail: int, salt: bytes
) -> None:
    width = 1 << level
    entries = tuple(salt + i.to_bytes(2, "big") for i in range(width * (blocks_before + 1) + tail))
    hashes = naive_leaf_hashes(entries)
    split = width * blocks_before
    tree = CompactTree()
    tree.extend(hashes[:split])
    tree.append_subtree(level, naive_mth(entries[split : split + width]))
    tree.extend(hashes[split + width :])
    assert tree.size == len(entries)
    assert tree.root() == naive_mth(entries)


@given(distinct_logs(), st.data())
def test_inclusion_proof_equals_reference_and_verifies(
    entries: tuple[bytes, ...], data: st.DataObject
) -> None:
    size = len(entries)
    index = data.draw(st.integers(0, size - 1), label="index")
    hashes = naive_leaf_hashes(entries)
    root = naive_mth(entries)
    proof = inclusion_proof(index, size, hashes)
    assert proof == naive_path(index, entries)
    assert len(inclusion_path_ranges(index, size)) == len(proof)
    assert verify_inclusion(hashes[index], index, size, proof, root)

    # tampering
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="at")
        byte = data.draw(st.integers(0, 31), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        bad = list(proof)
        bad[at] = _flip(bad[at], bit, byte)
        assert not verify_inclusion(hashes[index], index, size, bad, root)
        assert not verify_inclusion(hashes[index], index, size, proof[:-1], root)
    assert not verify_inclusion(hashes[index], index, size, [*proof, SOME_HASH], root)
    assert not verify_inclusion(hashes[index], index, size, [SOME_HASH, *proof], root)
    assert not verify_inclusion(hashes[index], index, size, proof, _flip(root))
    assert not verify_inclusion(_flip(hashes[index]), index, size, proof, root)
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="other")
    if size > 1:
        assert not verify_inclusion(hashes[index], other, size, proof, root)
        assert not verify_inclusion(hashes[other], index, size, proof, root)
    assert not verify_inclusion(hashes[index], size, size, proof, root)
    assert not verify_inclusion(hashes[index], index + size, size, proof, root)
    assert not verify_inclusion(hashes[index], -1, size, proof, root)


@given(distinct_logs(min_size=0), st.data())
def test_consistency_proof_equals_reference_and_verifies(
    entries: tuple[bytes, ...], data: st.DataObject
) -> None:
    second = len(entries)
    first = data.draw(st.integers(0, second), label="first")
    hashes = naive_leaf_hashes(entries)
    root1, root2 = naive_mth(entries[:first]), naive_mth(entries)
    proof = consistency_proof(first, second, hashes)
    expected = naive_proof(first, entries) if 0 < first < second else []
    assert proof == expected
    assert len(consistency_path_ranges(first, second)) == len(proof)
    assert verify_consistency(first, second, root1, root2, proof)

    # tampering
    assert not verify_consistency(first, second, _flip(root1), root2, proof)
    if first > 0:  # the empty tree is a prefix of every tree, whatever its root
        assert not verify_consistency(first, second, root1, _flip(root2), proof)
    assert not verify_consistency(first, second, root1, root2, [*proof, SOME_HASH])
    if first < second:
        assert not verify_consistency(second, first, root2, root1, proof)  # first > second
        assert not verify_consistency(first, second, root2, root1, proof)  # swapped roots
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="at")
        byte = data.draw(st.integers(0, 31), label="byte")
        bad = list(proof)
        bad[at] = _flip(bad[at], 0, byte)
        assert not verify_consistency(first, second, root1, root2, bad)
        assert not verify_consistency(first, second, root1, root2, proof[:-1])
        assert not verify_consistency(first, second, root1, root2, [SOME_HASH, *proof])
    if 0 < first < second:
        # a rewritten history: same sizes, one earlier entry changed
        changed = data.draw(st.integers(0, first - 1), label="changed")
        forged = (*entries[:changed], entries[changed] + b"!", *entries[changed + 1 :])
        assert not verify_consistency(first, second, naive_mth(forged[:first]), root2, proof)
        forged_proof = consistency_proof(first, second, naive_leaf_hashes(forged))
        assert not verify_consistency(first, second, root1, naive_mth(forged), forged_proof)


@given(distinct_logs(), st.data())
def test_proofs_ask_only_for_tree_nodes(entries: tuple[bytes, ...], data: st.DataObject) -> None:
    """A callback sees only node ranges, so perfect ones can be cached (module docstring)."""
    size = len(entries)
    hashes = naive_leaf_hashes(entries)
    seen: list[tuple[int, int]] = []

    def get(start: int, end: int) -> bytes:
        width = 1 << (end - start - 1).bit_length()  # the node's full width, a power of two
        assert start % width == 0
        assert end == start + width or end == size
        seen.append((start, end))
        return subtree_root(hashes, start, end)

    index = data.draw(st.integers(0, size - 1), label="index")
    assert inclusion_proof(index, size, get) == inclusion_proof(index, size, hashes)
    assert seen == inclusion_path_ranges(index, size)
    seen.clear()
    first = data.draw(st.integers(0, size), label="first")
    assert consistency_proof(first, size, get) == consistency_proof(first, size, hashes)
    assert seen == consistency_path_ranges(first, size)


@given(distinct_logs(), st.integers(0, 4), st.data())
def test_proofs_from_cached_tiles(
    entries: tuple[bytes, ...], tile_level: int, data: st.DataObject
) -> None:
    """The tile design of the module docstring: cached roots of 2**L-leaf blocks + the tail."""
    hashes = naive_leaf_hashes(entries)
    width = 1 << tile_level
    tiles = [
        root_from_leaf_hashes(hashes[i : i + width])
        for i in range(0, len(hashes) - width + 1, width)
    ]

    def from_tiles(start: int, end: int) -> bytes:
        tree = CompactTree()
        position = start
        while position + width <= end and position % width == 0:
            tree.append_subtree(tile_level, tiles[position // width])
            position += width
        tree.extend(hashes[position:end])
        return tree.root()

    size = len(entries)
    index = data.draw(st.integers(0, size - 1), label="index")
    first = data.draw(st.integers(0, size), label="first")
    assert inclusion_proof(index, size, from_tiles) == naive_path(index, entries)
    assert consistency_proof(first, size, from_tiles) == consistency_proof(first, size, hashes)


# ------------------------------------------------------------------------------------------------
# Hostile input: verifiers answer False, never raise
# ------------------------------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.binary(max_size=40),
    st.text(max_size=5),
    st.floats(allow_nan=True),
)
sizes = st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 20), junk)
hashes_or_junk = st.one_of(st.binary(min_size=32, max_size=32), junk)
proofs = st.one_of(st.lists(hashes_or_junk, max_size=8), junk, st.lists(st.just(SOME_HASH)))


@given(hashes_or_junk, sizes, sizes, proofs, hashes_or_junk)
def test_verify_inclusion_never_raises(
    leaf: Any, index: Any, size: Any, proof: Any, root: Any
) -> None:
    assert verify_inclusion(leaf, index, size, proof, root) in (True, False)


@given(sizes, sizes, hashes_or_junk, hashes_or_junk, proofs)
def test_verify_consistency_never_raises(
    first: Any, second: Any, root1: Any, root2: Any, proof: Any
) -> None:
    assert verify_consistency(first, second, root1, root2, proof) in (True, False)


def test_oversized_inputs_are_rejected_cheaply() -> None:
    h = VECTOR_LEAF_HASHES[1]
    assert not verify_inclusion(h, 0, MAX_TREE_SIZE + 1, [], h)
    assert not verify_inclusion(h, 0, 2**64, [SOME_HASH] * 64, h)
    assert not verify_inclusion(h, 0, 8, [SOME_HASH] * 1_000_000, h)
    assert not verify_consistency(1, 2**80, h, h, [SOME_HASH])
    assert not verify_consistency(3, 8, h, h, [SOME_HASH] * 1_000_000)
    assert not verify_inclusion(h, True, 2, [h], h)  # a bool is not an index


# ------------------------------------------------------------------------------------------------
# Misuse of the building side raises ValueError
# ------------------------------------------------------------------------------------------------


def test_generation_rejects_bad_arguments() -> None:
    hashes = VECTOR_LEAF_HASHES
    with pytest.raises(ValueError, match="leaf_index"):
        inclusion_proof(8, 8, hashes)
    with pytest.raises(ValueError, match="leaf_index"):
        inclusion_proof(-1, 8, hashes)
    with pytest.raises(ValueError, match="leaf hashes given"):
        inclusion_proof(0, 9, hashes)
    with pytest.raises(ValueError, match="greater than"):
        consistency_proof(5, 4, hashes)
    with pytest.raises(ValueError, match="leaf hashes given"):
        consistency_proof(4, 9, hashes)
    with pytest.raises(ValueError, match="outside"):
        subtree_root(hashes, 3, 9)
    with pytest.raises(ValueError, match="subtree root"):
        inclusion_proof(0, 2, lambda _start, _end: b"short")
    with pytest.raises(ValueError, match="leaf hash #1"):
        root_from_leaf_hashes([SOME_HASH, b"short"])


def test_compact_tree_rejects_bad_input_without_changing() -> None:
    tree = CompactTree()
    tree.extend(VECTOR_LEAF_HASHES[:3])
    before = (tree.size, tree.to_state())
    with pytest.raises(ValueError, match="leaf hash #2"):
        tree.extend([SOME_HASH, SOME_HASH, b"short", SOME_HASH])
    with pytest.raises(ValueError, match="leaf hash"):
        tree.append(SOME_HASH.hex())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of"):
        tree.append_subtree(1, SOME_HASH)
    with pytest.raises(ValueError, match="level"):
        tree.append_subtree(-1, SOME_HASH)
    assert (tree.size, tree.to_state()) == before


@pytest.mark.parametrize(
    ("size", "nodes"),
    [
        (-1, []),
        (3, [SOME_HASH]),
        (4, [SOME_HASH, SOME_HASH]),
        (1, [b"short"]),
        (True, [SOME_HASH]),
        (MAX_TREE_SIZE + 1, [SOME_HASH]),
    ],
)
def test_from_state_rejects_what_to_state_cannot_produce(size: Any, nodes: list[bytes]) -> None:
    with pytest.raises(ValueError, match=r"tree size|state hash"):
        CompactTree.from_state(size, nodes)


# ------------------------------------------------------------------------------------------------
# Signed tree heads
# ------------------------------------------------------------------------------------------------

ROOT_HEX = VECTOR_ROOTS[8].hex()
TIMESTAMP = "2026-01-01T00:00:00.000000Z"


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def test_tree_head_message_is_exactly_the_documented_bytes() -> None:
    assert tree_head_message(8, ROOT_HEX, TIMESTAMP) == (
        b"hammerlock.tree_head.v1\n8\n" + ROOT_HEX.encode() + b"\n" + TIMESTAMP.encode() + b"\n"
    )
    assert tree_head_message(0, EMPTY_ROOT.hex(), "2026-01-01T00:00:00Z").startswith(
        b"hammerlock.tree_head.v1\n0\ne3b0c442"
    )


def test_tree_head_sign_verify_round_trip() -> None:
    key = _key(1)
    signature = sign_tree_head(key, 8, ROOT_HEX, TIMESTAMP)
    assert len(signature) == 64
    public = key.public_key()
    assert verify_tree_head(public, 8, ROOT_HEX, TIMESTAMP, signature)
    # Ed25519 is deterministic, and it is a plain signature over the message
    assert signature == sign_tree_head(key, 8, ROOT_HEX, TIMESTAMP)
    public.verify(signature, tree_head_message(8, ROOT_HEX, TIMESTAMP))


def test_tree_head_verification_fails_on_any_change() -> None:
    key = _key(1)
    public = key.public_key()
    signature = sign_tree_head(key, 8, ROOT_HEX, TIMESTAMP)
    other_root = VECTOR_ROOTS[7].hex()
    assert not verify_tree_head(_key(2).public_key(), 8, ROOT_HEX, TIMESTAMP, signature)
    assert not verify_tree_head(public, 7, ROOT_HEX, TIMESTAMP, signature)
    assert not verify_tree_head(public, 9, ROOT_HEX, TIMESTAMP, signature)
    assert not verify_tree_head(public, 8, other_root, TIMESTAMP, signature)
    assert not verify_tree_head(public, 8, ROOT_HEX, "2026-01-01T00:00:00.000001Z", signature)
    assert not verify_tree_head(public, 8, ROOT_HEX, TIMESTAMP, _flip(signature))
    assert not verify_tree_head(public, 8, ROOT_HEX, TIMESTAMP, signature[:-1])
    assert not verify_tree_head(public, 8, ROOT_HEX, TIMESTAMP, b"")
    # the same head in another spelling is another message: rejected, not normalised
    assert not verify_tree_head(public, 8, ROOT_HEX.upper(), TIMESTAMP, signature)
    assert not verify_tree_head(public, 8, ROOT_HEX, TIMESTAMP.lower(), signature)
    assert not verify_tree_head(public, 8, ROOT_HEX, TIMESTAMP.replace("Z", "+00:00"), signature)


@pytest.mark.parametrize(
    ("size", "root_hex", "timestamp"),
    [
        (-1, ROOT_HEX, TIMESTAMP),
        (True, ROOT_HEX, TIMESTAMP),
        (MAX_TREE_SIZE + 1, ROOT_HEX, TIMESTAMP),
        ("8", ROOT_HEX, TIMESTAMP),
        (8, ROOT_HEX.upper(), TIMESTAMP),
        (8, ROOT_HEX[:-2], TIMESTAMP),
        (8, ROOT_HEX + "\n", TIMESTAMP),
        (8, VECTOR_ROOTS[8], TIMESTAMP),
        (8, ROOT_HEX, "2026-01-01T00:00:00.000000Z\n9"),
        (8, ROOT_HEX, "2026-01-01 00:00:00Z"),
        (8, ROOT_HEX, "2026-01-01T00:00:00+00:00"),
        (8, ROOT_HEX, "2026-02-30T00:00:00Z"),
        (8, ROOT_HEX, "2026-01-01T24:00:00Z"),
        (8, ROOT_HEX, "２０２６-01-01T00:00:00Z"),  # noqa: RUF001 (full-width digits are the point)
        (8, ROOT_HEX, ""),
    ],
)
def test_malformed_heads_are_refused(size: Any, root_hex: Any, timestamp: Any) -> None:
    with pytest.raises(ValueError, match=r"size|root_hash|timestamp"):
        tree_head_message(size, root_hex, timestamp)
    with pytest.raises(ValueError, match=r"size|root_hash|timestamp"):
        sign_tree_head(_key(1), size, root_hex, timestamp)
    signature = sign_tree_head(_key(1), 8, ROOT_HEX, TIMESTAMP)
    assert verify_tree_head(_key(1).public_key(), size, root_hex, timestamp, signature) is False


@given(
    sizes=st.lists(st.integers(0, 70), min_size=1, max_size=6),
    level=st.integers(0, 5),
)
def test_extend_tiles_returns_the_roots_of_the_tiles_it_completes(
    sizes: list[int], level: int
) -> None:
    entries = [b"e%d" % i for i in range(sum(sizes))]
    leaves = [leaf_hash(e) for e in entries]
    tree, plain, done, tiles = CompactTree(), CompactTree(), 0, []
    for n in sizes:
        tiles += tree.extend_tiles(leaves[done : done + n], level)
        plain.extend(leaves[done : done + n])
        done += n
        assert tree.to_state() == plain.to_state()
    width = 1 << level
    assert tiles == [
        (i, naive_mth(tuple(entries[i * width : (i + 1) * width])))
        for i in range(len(entries) // width)
    ]
    assert tree.size == len(entries)
    assert tree.root() == naive_mth(tuple(entries))
