"""Micro benchmark of hammerlock.audit.merkle, each figure beside a baseline from the same run.

1. Appending leaves, leaf hashing included, on one core:
   - baseline: a plain loop over hashlib computing SHA-256(0x00 || entry) for the same entries;
   - baseline: the same compact-range append written inline over hashlib (no class, no checks);
   - CompactTree.append(leaf_hash(entry)) one at a time;
   - CompactTree.extend(...) in batches (the sequencer's shape: one batch per poll).
2. root() (once per signed head), to_state()/from_state() (once per persisted position).
3. Proofs over a log of --proof-leaves (default 1,000,000) leaves:
   - inclusion and consistency proofs from the plain list of leaf hashes (O(n) hashes each);
   - the same from cached roots of 2**L-leaf tiles (module docstring), and the one-off cost of
     building that cache;
   - verification.

Usage: .venv/bin/python bench/merkle_bench.py [--leaves N] [--entry-bytes B] [--tile-level L]
Prints figures only; nothing is written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import time
from collections.abc import Callable

from hammerlock.audit.merkle import (
    CompactTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)


def best_of(repeat: int, run: Callable[[], object]) -> float:
    """The fastest of ``repeat`` runs, in seconds (the least disturbed by the machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def make_entries(count: int, size: int) -> list[bytes]:
    rng = random.Random(9162)
    body = rng.randbytes(size)
    # distinct entries of one size, like canonical JSON events differing in seq and event_id
    return [i.to_bytes(8, "big") + body[8:] for i in range(count)]


def row(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<46} {value:>16}  {note}".rstrip())


def bench_append(entries: list[bytes], repeat: int, batch: int) -> None:
    count = len(entries)

    def leaf_hashes_only() -> None:
        sha256 = hashlib.sha256
        for entry in entries:
            sha256(b"\x00" + entry).digest()

    def raw_merkle_append() -> None:
        # The same compact-range algorithm inlined over hashlib: no class, no checks.
        sha256 = hashlib.sha256
        nodes: list[bytes] = []
        for size, entry in enumerate(entries):
            node = sha256(b"\x00" + entry).digest()
            carry = size
            while carry & 1:
                node = sha256(b"\x01" + nodes.pop() + node).digest()
                carry >>= 1
            nodes.append(node)

    def one_at_a_time() -> None:
        tree = CompactTree()
        for entry in entries:
            tree.append(leaf_hash(entry))

    def batched() -> None:
        tree = CompactTree()
        for begin in range(0, count, batch):
            tree.extend([leaf_hash(e) for e in entries[begin : begin + batch]])

    print(f"append {count:,} entries of {len(entries[0])} bytes, leaf hashing included:")
    base = best_of(repeat, leaf_hashes_only)
    row("baseline: hashlib loop, leaf hashes only", f"{count / base:,.0f} leaves/s")
    raw = best_of(repeat, raw_merkle_append)
    row("baseline: raw hashlib Merkle append", f"{count / raw:,.0f} leaves/s")
    for name, run in (
        ("CompactTree.append, one at a time", one_at_a_time),
        (f"CompactTree.extend, batches of {batch:,}", batched),
    ):
        elapsed = best_of(repeat, run)
        row(
            name,
            f"{count / elapsed:,.0f} leaves/s",
            f"({base / elapsed:.2f}x leaf-hash loop, {raw / elapsed:.2f}x raw Merkle append)",
        )


def bench_state(entries: list[bytes], repeat: int) -> None:
    tree = CompactTree()
    tree.extend(leaf_hash(e) for e in entries)
    rounds = 10_000
    state = tree.to_state()
    root_s = best_of(repeat, lambda: [tree.root() for _ in range(rounds)]) / rounds
    resume_s = (
        best_of(repeat, lambda: [CompactTree.from_state(tree.size, state) for _ in range(rounds)])
        / rounds
    )
    print(f"tree of {tree.size:,} leaves, {len(state)} state hashes:")
    row("root()", f"{root_s * 1e6:.1f} us")
    row("from_state(size, to_state())", f"{resume_s * 1e6:.1f} us")


def bench_proofs(leaves: int, repeat: int, tile_level: int) -> None:
    hashes = [hashlib.sha256(b"\x00" + i.to_bytes(8, "big")).digest() for i in range(leaves)]
    size = leaves
    index = size // 3
    first = size - size // 7
    print(f"proofs on {size:,} leaves (leaf hashes in memory):")
    root_s = best_of(1, lambda: root_from_leaf_hashes(hashes))
    row("root_from_leaf_hashes (all n leaves)", f"{root_s * 1e3:.1f} ms")
    root = root_from_leaf_hashes(hashes)
    first_root = root_from_leaf_hashes(hashes[:first])

    inclusion_s = best_of(repeat, lambda: inclusion_proof(index, size, hashes))
    consistency_s = best_of(repeat, lambda: consistency_proof(first, size, hashes))
    row(f"inclusion proof ({index:,}) from leaf hashes", f"{inclusion_s * 1e3:.1f} ms")
    row(f"consistency proof ({first:,}) from leaf hashes", f"{consistency_s * 1e3:.1f} ms")

    width = 1 << tile_level
    begin_s = time.perf_counter()
    tiles = [
        root_from_leaf_hashes(hashes[i : i + width]) for i in range(0, size - width + 1, width)
    ]
    build_s = time.perf_counter() - begin_s

    def from_tiles(begin: int, end: int) -> bytes:
        tree = CompactTree()
        position = begin
        while position + width <= end and position % width == 0:
            tree.append_subtree(tile_level, tiles[position // width])
            position += width
        tree.extend(hashes[position:end])
        return tree.root()

    proof = inclusion_proof(index, size, from_tiles)
    cproof = consistency_proof(first, size, from_tiles)
    assert proof == inclusion_proof(index, size, hashes)  # a self-check, not a figure
    assert cproof == consistency_proof(first, size, hashes)
    tiled_inclusion_s = best_of(repeat, lambda: inclusion_proof(index, size, from_tiles))
    tiled_consistency_s = best_of(repeat, lambda: consistency_proof(first, size, from_tiles))
    row(f"tile cache: {len(tiles):,} roots of 2**{tile_level} leaves", f"{build_s * 1e3:.0f} ms")
    row("inclusion proof from tiles", f"{tiled_inclusion_s * 1e3:.2f} ms")
    row("consistency proof from tiles", f"{tiled_consistency_s * 1e3:.2f} ms")

    rounds = 2_000
    leaf = hashes[index]
    verify_inclusion_s = (
        best_of(
            repeat,
            lambda: [verify_inclusion(leaf, index, size, proof, root) for _ in range(rounds)],
        )
        / rounds
    )
    verify_consistency_s = (
        best_of(
            repeat,
            lambda: [
                verify_consistency(first, size, first_root, root, cproof) for _ in range(rounds)
            ],
        )
        / rounds
    )
    row(f"verify_inclusion ({len(proof)} hashes)", f"{verify_inclusion_s * 1e6:.1f} us")
    row(f"verify_consistency ({len(cproof)} hashes)", f"{verify_consistency_s * 1e6:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000, help="entries to append")
    parser.add_argument("--entry-bytes", type=int, default=384, help="canonical event size")
    parser.add_argument("--batch", type=int, default=1_000, help="extend() batch size")
    parser.add_argument("--proof-leaves", type=int, default=1_000_000, help="log size for proofs")
    parser.add_argument("--tile-level", type=int, default=8, help="tiles of 2**L leaves")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is kept)")
    args = parser.parse_args()

    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}; one core; best of {args.repeat} runs"
    )
    entries = make_entries(args.leaves, args.entry_bytes)
    bench_append(entries, args.repeat, args.batch)
    bench_state(entries, args.repeat)
    del entries
    bench_proofs(args.proof_leaves, args.repeat, args.tile_level)


if __name__ == "__main__":
    main()
