"""The audit log's Merkle tree (RFC 9162 §2.1), its proofs and its signed tree heads. No I/O.

Hashing (RFC 9162 §2.1.1), SHA-256 throughout::

    leaf_hash(d)    = SHA-256(0x00 || d)          d: an event's canonical (JCS) bytes
    node_hash(l, r) = SHA-256(0x01 || l || r)
    MTH({})         = SHA-256("")                 EMPTY_ROOT
    MTH(D[n])       = node_hash(MTH(D[0:k]), MTH(D[k:n])), k = largest power of two < n

An event's ``seq`` is its leaf index, from 0. A tree of ``size`` n holds the leaves 0 .. n-1.

Formats. Inside this module every hash is 32 raw bytes. Outside it (the API, the archive, the
signed message) a hash is 64 lowercase hex characters; keys and signatures are raw Ed25519 bytes
here and standard base64 (RFC 4648 §4) in the API layer, which does that encoding.

Signed tree heads. The signature is Ed25519 over the UTF-8 bytes of::

    hammerlock.tree_head.v1\\n<size>\\n<root_hash>\\n<timestamp>\\n

``size`` in decimal without leading zeros, ``root_hash`` lowercase hex, ``timestamp`` RFC 3339
UTC exactly as stored (``2026-01-01T00:00:00.000000Z``: upper-case ``T`` and ``Z``, optional
fraction). Each field is validated so that one message has exactly one reading.

Building the tree. :class:`CompactTree` keeps only the roots of the perfect subtrees that make up
``[0, size)`` (one per set bit of ``size``), so appending costs one leaf hash plus, amortised, one
node hash, and the whole state is at most 63 hashes that a sequencer persists beside its position.

Proofs. Generation asks for the roots of O(log n) subtrees, each ``[start, end)`` a node of the
tree of the proof's size: ``start`` is a multiple of a power of two ``2**j >= end - start`` and
``end = min(start + 2**j, size)``. :func:`inclusion_path_ranges` and
:func:`consistency_path_ranges` list them, so storage can fetch exactly what a proof needs. Pass
either the leaf hashes (a sequence) or a :data:`SubtreeHasher` callback:

- from leaf hashes, the ranges of an inclusion proof cover every leaf but one and those of a
  consistency proof at most every leaf of the second tree, so a proof reads O(n) leaf hashes and
  costs O(n) node hashes (about 1 s at n = 1,000,000 on one core; ``bench/merkle_bench.py``);
- a callback can answer from cached subtree roots instead: a range whose length is a power of two
  is a perfect subtree and never changes once the log has grown past it, so a store of the roots
  of every 2**L-leaf block (a "tile") makes a proof O(n / 2**L + 2**L) hashes (ranges shorter
  than a tile lie in the leaf's own tile or the last, partial one; about 6 ms at n = 1,000,000,
  L = 8). Rebuild a range's root with :meth:`CompactTree.append_subtree` for its whole tiles and
  :meth:`CompactTree.extend` for its ragged tail.

Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 step by step. Verifiers take attacker-
controlled input and never raise on it: malformed sizes, indices, hashes or proofs give ``False``.
Proof generation and tree building take trusted input and raise :class:`ValueError` on misuse.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "SIGNATURE_SIZE",
    "TREE_HEAD_DOMAIN",
    "CompactTree",
    "SubtreeHasher",
    "consistency_path_ranges",
    "consistency_proof",
    "inclusion_path_ranges",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "sign_tree_head",
    "subtree_root",
    "tree_head_message",
    "verify_consistency",
    "verify_inclusion",
    "verify_tree_head",
]

HASH_SIZE = 32
SIGNATURE_SIZE = 64
# Tree sizes are BIGINT `seq` values; the bound also caps a verifier's work on hostile input.
MAX_TREE_SIZE = 2**63 - 1
# A tree of at most 2**63 - 1 leaves has inclusion proofs of <= 63 and consistency proofs of
# <= 2 * 63 hashes; anything longer is rejected before it is looked at.
_MAX_PROOF_LENGTH = 2 * 63
TREE_HEAD_DOMAIN = "hammerlock.tree_head.v1"

EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256

# [0-9], not \d: \d matches every Unicode digit, and each message must have one reading.
_ROOT_HEX = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?Z")

SubtreeHasher = Callable[[int, int], bytes]
"""``get(start, end)`` returns MTH of the leaves ``[start, end)`` (a node of the proof's tree)."""


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one log entry (RFC 9162 §2.1.1)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): an interior node (RFC 9162 §2.1.1)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes, level by level in O(n) hashes and O(n) memory.

    Pairing neighbours on each level and carrying an unpaired last node up unchanged builds the
    same tree as RFC 9162's recursive split at the largest power of two below n: the left part of
    every split is a perfect subtree, so all of its levels pair up evenly.
    """
    level = list(hashes)
    _require_hashes(level, "leaf hash")
    if not level:
        return EMPTY_ROOT
    sha256 = _sha256
    while len(level) > 1:
        paired = [
            sha256(b"\x01" + left + right).digest()
            for left, right in zip(level[0::2], level[1::2], strict=False)
        ]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
    return level[0]


def subtree_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH of ``leaf_hashes[start:end]``: O(end - start) hashes."""
    if not 0 <= start <= end <= len(leaf_hashes):
        raise ValueError(f"subtree [{start}, {end}) is outside 0..{len(leaf_hashes)}")
    return root_from_leaf_hashes(leaf_hashes[start:end])


# --------------------------------------------------------------------------------------------
# Compact tree (the sequencer's frontier)
# --------------------------------------------------------------------------------------------


class CompactTree:
    """An append-only RFC 9162 tree that keeps only O(log n) hashes.

    The state is the roots of the perfect subtrees that tile ``[0, size)``, largest (leftmost)
    first: one per set bit of ``size``. Appending a leaf merges equal-sized neighbours like a
    binary counter carries, so it costs amortised one node hash; :meth:`root` folds the
    state from the right in O(log n) hashes.

    Persist ``(size, to_state())`` with the sequencer's position; :meth:`from_state` resumes
    without re-reading any leaf. The state cannot prove itself: after resuming, check ``root()``
    against the last signed tree head of that size.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._nodes: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, nodes: Sequence[bytes]) -> CompactTree:
        """Resume from :meth:`to_state`; raises :class:`ValueError` if it is not one."""
        _require_size(size, "tree size")
        state = list(nodes)
        if len(state) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {size.bit_count()} state hashes, not {len(state)}"
            )
        _require_hashes(state, "state hash")
        tree = cls()
        tree._size = size
        tree._nodes = state
        return tree

    def to_state(self) -> list[bytes]:
        """The perfect-subtree roots, largest first (a copy)."""
        return list(self._nodes)

    @property
    def size(self) -> int:
        return self._size

    def root(self) -> bytes:
        """MTH of every leaf appended so far."""
        nodes = self._nodes
        if not nodes:
            return EMPTY_ROOT
        root = nodes[-1]
        for left in reversed(nodes[:-1]):
            root = _sha256(b"\x01" + left + root).digest()
        return root

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf, given its leaf hash."""
        if not _is_hash(leaf_hash):
            raise ValueError(f"leaf hash is not {HASH_SIZE} bytes")
        if self._size >= MAX_TREE_SIZE:
            raise ValueError(f"the tree would exceed {MAX_TREE_SIZE} leaves")
        self._carry(0, leaf_hash)

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaves in order, given their leaf hashes; all or none (each is checked first)."""
        batch = list(leaf_hashes)
        _require_hashes(batch, "leaf hash")
        if self._size + len(batch) > MAX_TREE_SIZE:
            raise ValueError(f"the tree would exceed {MAX_TREE_SIZE} leaves")
        sha256 = _sha256
        nodes = self._nodes
        size = self._size
        for node in batch:  # _carry(0, node), inlined: this loop is the sequencer's hot path
            carry = size
            merged = node
            while carry & 1:
                merged = sha256(b"\x01" + nodes.pop() + merged).digest()
                carry >>= 1
            nodes.append(merged)
            size += 1
        self._size = size

    def extend_tiles(self, leaf_hashes: Iterable[bytes], level: int) -> list[tuple[int, bytes]]:
        """:meth:`extend`, returning ``(index, root)`` of every perfect ``2**level``-leaf subtree
        (a "tile": leaves ``index * 2**level`` up to the next multiple) the new leaves complete.

        Free of extra hashing: the carry that appends a tile's last leaf merges its way up through
        that tile's root, which is the node after ``level`` merges.
        """
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < 63:
            raise ValueError("tile level must be an integer in 0..62")
        batch = list(leaf_hashes)
        _require_hashes(batch, "leaf hash")
        if self._size + len(batch) > MAX_TREE_SIZE:
            raise ValueError(f"the tree would exceed {MAX_TREE_SIZE} leaves")
        sha256 = _sha256
        nodes = self._nodes
        size = self._size
        tiles: list[tuple[int, bytes]] = []
        for node in batch:
            carry = size
            merged = node
            height = 0
            while carry & 1:
                if height == level:
                    break
                merged = sha256(b"\x01" + nodes.pop() + merged).digest()
                carry >>= 1
                height += 1
            if height == level:  # size had `level` trailing 1-bits: size + 1 ends a tile
                tiles.append((((size + 1) >> level) - 1, merged))
            while carry & 1:  # above the tile: carry on as extend() does
                merged = sha256(b"\x01" + nodes.pop() + merged).digest()
                carry >>= 1
            nodes.append(merged)
            size += 1
        self._size = size
        return tiles

    def append_subtree(self, level: int, root: bytes) -> None:
        """Add ``2**level`` leaves at once, given the root of the perfect subtree they form.

        The tree's size must be a multiple of ``2**level`` (the subtree must start on its own
        boundary, as a node of the tree). Used to rebuild a range's root from cached tiles.
        """
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < 63:
            raise ValueError("subtree level must be an integer in 0..62")
        _require_hashes((root,), "subtree root")
        width = 1 << level
        if self._size % width:
            raise ValueError(f"size {self._size} is not a multiple of 2**{level}")
        if self._size + width > MAX_TREE_SIZE:
            raise ValueError(f"the tree would exceed {MAX_TREE_SIZE} leaves")
        self._carry(level, root)

    def _carry(self, level: int, node: bytes) -> None:
        # The carry loop of a binary counter: each trailing 1-bit of size >> level is a perfect
        # subtree of the new node's height, which the new node completes.
        nodes = self._nodes
        carry = self._size >> level
        while carry & 1:
            node = _sha256(b"\x01" + nodes.pop() + node).digest()
            carry >>= 1
        nodes.append(node)
        self._size += 1 << level

    def __repr__(self) -> str:
        return f"CompactTree(size={self._size}, root={self.root().hex()})"


# --------------------------------------------------------------------------------------------
# Proof generation (RFC 9162 §2.1.3.1 PATH and §2.1.4.1 PROOF/SUBPROOF, unrolled)
# --------------------------------------------------------------------------------------------


def _split(count: int) -> int:
    """The largest power of two strictly less than ``count`` (``count >= 2``)."""
    return 1 << ((count - 1).bit_length() - 1)


def inclusion_path_ranges(leaf_index: int, tree_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form PATH(leaf_index, D[tree_size]), in proof order."""
    _require_size(tree_size, "tree_size")
    _require_size(leaf_index, "leaf_index")
    if leaf_index >= tree_size:
        raise ValueError(f"leaf_index {leaf_index} is not below tree_size {tree_size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, tree_size
    while end - start > 1:
        mid = start + _split(end - start)
        if leaf_index < mid:
            ranges.append((mid, end))
            end = mid
        else:
            ranges.append((start, mid))
            start = mid
    ranges.reverse()  # PATH lists the sibling nearest the leaf first
    return ranges


def consistency_path_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form PROOF(first, D[second]), in proof order.

    Empty when ``first == second`` and when ``first == 0`` (the empty tree is a prefix of
    every tree; RFC 9162 defines proofs only for 0 < first < second).
    """
    _require_size(first, "first")
    _require_size(second, "second")
    if first > second:
        raise ValueError(f"first {first} is greater than second {second}")
    if first in (0, second):
        return []
    ranges: list[tuple[int, int]] = []
    start, end = 0, second
    whole = True  # SUBPROOF's b: still on the left edge, where the verifier knows MTH(D[0:m])
    while first != end:
        mid = start + _split(end - start)
        if first <= mid:
            ranges.append((mid, end))
            end = mid
        else:
            ranges.append((start, mid))
            start = mid
            whole = False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def inclusion_proof(
    leaf_index: int, tree_size: int, get_hash: Sequence[bytes] | SubtreeHasher
) -> list[bytes]:
    """The audit path of ``leaf_index`` in the tree of ``tree_size`` leaves (RFC 9162 §2.1.3.1).

    ``get_hash`` is the log's leaf hashes (at least ``tree_size`` of them) or a
    :data:`SubtreeHasher`; see the module docstring for the cost of each.
    """
    ranges = inclusion_path_ranges(leaf_index, tree_size)
    return _hash_ranges(ranges, _subtree_hasher(get_hash, tree_size))


def consistency_proof(
    first: int, second: int, get_hash: Sequence[bytes] | SubtreeHasher
) -> list[bytes]:
    """The proof that the tree of ``first`` leaves is a prefix of the one of ``second``.

    RFC 9162 §2.1.4.1; ``get_hash`` as for :func:`inclusion_proof`.
    """
    ranges = consistency_path_ranges(first, second)
    return _hash_ranges(ranges, _subtree_hasher(get_hash, second))


def _subtree_hasher(get_hash: Sequence[bytes] | SubtreeHasher, tree_size: int) -> SubtreeHasher:
    if callable(get_hash):
        return get_hash
    leaves = get_hash
    if len(leaves) < tree_size:
        raise ValueError(f"{len(leaves)} leaf hashes given for a tree of {tree_size}")

    def from_leaves(start: int, end: int) -> bytes:
        return subtree_root(leaves, start, end)

    return from_leaves


def _hash_ranges(ranges: list[tuple[int, int]], get: SubtreeHasher) -> list[bytes]:
    proof = [get(start, end) for start, end in ranges]
    _require_hashes(proof, "subtree root")
    return proof


# --------------------------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2): never raises on what a client receives
# --------------------------------------------------------------------------------------------


def verify_inclusion(
    leaf_hash: bytes, leaf_index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``proof`` shows ``leaf_hash`` at ``leaf_index`` in the tree with ``root``.

    The proof authenticates the leaf against the root; ``tree_size`` must come from the same
    signed tree head as ``root`` (a proof alone does not pin the size).
    """
    if not (
        _is_size(leaf_index)
        and _is_size(tree_size)
        and _is_hash(leaf_hash)
        and _is_hash(root)
        and _is_proof(proof)
    ):
        return False
    # 1. leaf_index >= tree_size fails.
    if leaf_index >= tree_size:
        return False
    # 2.-3.
    fn, sn = leaf_index, tree_size - 1
    r = leaf_hash
    # 4.
    for p in proof:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # c.
        sn >>= 1
    # 5.
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff ``proof`` shows the tree (first, first_root) is a prefix of (second, second_root).

    Beyond RFC 9162 (which covers 0 < first < second): equal sizes are consistent iff the roots
    are equal and the proof is empty; the empty tree is a prefix of every tree, with an empty
    proof, but only if ``first_root`` really is :data:`EMPTY_ROOT`.
    """
    if not (
        _is_size(first)
        and _is_size(second)
        and _is_hash(first_root)
        and _is_hash(second_root)
        and _is_proof(proof)
    ):
        return False
    if first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    # 1. An empty path fails.
    if not proof:
        return False
    path = list(proof)
    # 2. A power-of-two first tree is a node of the second: its root is the path's start.
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    # 3.
    fn, sn = first - 1, second - 1
    # 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    return fr == first_root and sr == second_root and sn == 0


# --------------------------------------------------------------------------------------------
# Signed tree heads
# --------------------------------------------------------------------------------------------


def tree_head_message(size: int, root_hash_hex: str, timestamp: str) -> bytes:
    """The bytes a tree head's Ed25519 signature covers; :class:`ValueError` if malformed."""
    _require_size(size, "size")
    if not isinstance(root_hash_hex, str) or not _ROOT_HEX.fullmatch(root_hash_hex):
        raise ValueError("root_hash must be 64 lowercase hex characters")
    if not isinstance(timestamp, str) or not _is_rfc3339_utc(timestamp):
        raise ValueError("timestamp must be RFC 3339 UTC, like 2026-01-01T00:00:00.000000Z")
    return f"{TREE_HEAD_DOMAIN}\n{size}\n{root_hash_hex}\n{timestamp}\n".encode()


def sign_tree_head(
    private_key: Ed25519PrivateKey, size: int, root_hash_hex: str, timestamp: str
) -> bytes:
    """The raw 64-byte Ed25519 signature of :func:`tree_head_message`."""
    return private_key.sign(tree_head_message(size, root_hash_hex, timestamp))


def verify_tree_head(
    public_key: Ed25519PublicKey,
    size: int,
    root_hash_hex: str,
    timestamp: str,
    signature: bytes,
) -> bool:
    """True iff ``signature`` is ``public_key``'s over this exact head; never raises on input."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        message = tree_head_message(size, root_hash_hex, timestamp)
    except ValueError:
        return False
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _is_hash(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_proof(proof: Any) -> bool:
    return (
        isinstance(proof, Sequence)
        and not isinstance(proof, bytes | str)
        and len(proof) <= _MAX_PROOF_LENGTH
        and all(_is_hash(p) for p in proof)
    )


def _is_rfc3339_utc(timestamp: str) -> bool:
    if not _TIMESTAMP.fullmatch(timestamp):
        return False
    try:
        datetime.fromisoformat(timestamp[:19])  # rejects month 13, 30 February, hour 24
    except ValueError:
        return False
    return True


def _require_size(value: int, name: str) -> None:
    if not _is_size(value):
        raise ValueError(f"{name} must be an integer in 0..{MAX_TREE_SIZE}")


def _require_hashes(hashes: Sequence[bytes], what: str) -> None:
    # One C-level pass in the common case; find the culprit only when there is one.
    if all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes):
        return
    for position, value in enumerate(hashes):
        if not _is_hash(value):
            raise ValueError(f"{what} #{position} is not {HASH_SIZE} bytes")
