"""Inclusion and consistency proofs from the stored log: tile roots for whole blocks, leaf
hashes for the rest.

A proof for a tree of ``n`` leaves is the roots of O(log n) subtrees, listed by
:func:`~hammerlock.audit.merkle.inclusion_path_ranges` and
:func:`~hammerlock.audit.merkle.consistency_path_ranges`. Each range ``[start, end)`` is a node of
that tree, so:

- a range of at least :data:`TILE_SIZE` leaves starts on a tile boundary: its root folds the
  stored roots of its whole tiles (``audit_tree_tiles``, :meth:`CompactTree.append_subtree`) and
  the leaf hashes of its ragged tail (only at the tree's right edge, where the last tile is
  incomplete);
- a shorter range lies inside one tile and is hashed from its leaf hashes (``audit_log``).

Everything a proof needs is fetched first, in a few range queries (neighbouring spans merged):
at most ``n / TILE_SIZE`` tile rows and two tiles' worth of leaf rows, so a proof costs
O(n / 256 + 256) hashes (a few milliseconds at a million events) instead of O(n).

The caller checks that ``tree_size`` is a size the log has reached; a missing tile or leaf below
it means the store is damaged and raises :class:`RuntimeError` (``hammerlock audit verify`` says
where).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hammerlock.audit import storage
from hammerlock.audit.merkle import (
    CompactTree,
    consistency_path_ranges,
    consistency_proof,
    inclusion_path_ranges,
    inclusion_proof,
)
from hammerlock.audit.storage import TILE_LEVEL, TILE_SIZE
from hammerlock.db.uow import UnitOfWork

__all__ = ["consistency_path", "inclusion_path", "range_plan", "range_root", "subtree_roots"]

Span = tuple[int, int]
_NO_SPAN: Span = (0, 0)
# Spans closer than this are read with one query (a few extra rows beat another round trip).
_TILE_SLACK = 1
_LEAF_SLACK = TILE_SIZE


def range_plan(start: int, end: int) -> tuple[Span, Span]:
    """The tiles ``[lo, hi)`` and leaves ``[lo, hi)`` whose hashes give MTH of ``[start, end)``."""
    if not 0 <= start < end:
        raise ValueError(f"empty or negative range [{start}, {end})")
    if end - start < TILE_SIZE:
        return _NO_SPAN, (start, end)
    if start % TILE_SIZE:
        raise ValueError(f"range [{start}, {end}) is not a node of the tree (unaligned start)")
    whole = end // TILE_SIZE
    return (start // TILE_SIZE, whole), (whole * TILE_SIZE, end)


def range_root(
    start: int, end: int, tiles: Mapping[int, bytes], leaves: Mapping[int, bytes]
) -> bytes:
    """MTH of the leaves ``[start, end)`` from tile roots and leaf hashes (by index)."""
    (tile_lo, tile_hi), (leaf_lo, leaf_hi) = range_plan(start, end)
    tree = CompactTree()
    for idx in range(tile_lo, tile_hi):
        tile = tiles.get(idx)
        if tile is None:
            raise _damaged("tile", idx)
        tree.append_subtree(TILE_LEVEL, tile)
    tail: list[bytes] = []
    for seq in range(leaf_lo, leaf_hi):
        leaf = leaves.get(seq)
        if leaf is None:
            raise _damaged("the leaf of seq", seq)
        tail.append(leaf)
    tree.extend(tail)
    return tree.root()


def _damaged(what: str, index: int) -> RuntimeError:
    return RuntimeError(
        f"the audit store lacks {what} {index} below a signed tree size "
        "(run `hammerlock audit verify`)"
    )


def _merge(spans: Iterable[Span], slack: int) -> list[Span]:
    merged: list[Span] = []
    for lo, hi in sorted(s for s in spans if s[0] < s[1]):
        if merged and lo <= merged[-1][1] + slack:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


async def subtree_roots(uow: UnitOfWork, ranges: list[Span]) -> dict[Span, bytes]:
    """The root of each range (each a node of some tree the log has reached), read in a few
    queries."""
    plans = [range_plan(start, end) for start, end in ranges]
    tiles: dict[int, bytes] = {}
    for lo, hi in _merge((tile_span for tile_span, _ in plans), _TILE_SLACK):
        tiles.update(await storage.tile_roots(uow, lo, hi))
    leaves: dict[int, bytes] = {}
    for lo, hi in _merge((leaf_span for _, leaf_span in plans), _LEAF_SLACK):
        leaves.update(await storage.leaf_hashes(uow, lo, hi))
    return {(start, end): range_root(start, end, tiles, leaves) for start, end in ranges}


async def inclusion_path(uow: UnitOfWork, leaf_index: int, tree_size: int) -> list[bytes]:
    """PATH(leaf_index, D[tree_size]) (RFC 9162 §2.1.3.1) from the store."""
    roots = await subtree_roots(uow, inclusion_path_ranges(leaf_index, tree_size))
    return inclusion_proof(leaf_index, tree_size, lambda start, end: roots[start, end])


async def consistency_path(uow: UnitOfWork, first: int, second: int) -> list[bytes]:
    """PROOF(first, D[second]) (RFC 9162 §2.1.4.1) from the store."""
    roots = await subtree_roots(uow, consistency_path_ranges(first, second))
    return consistency_proof(first, second, lambda start, end: roots[start, end])
