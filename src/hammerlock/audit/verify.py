"""Checking the whole audit log as an auditor would: ``hammerlock audit verify``.

One pass over ``audit_log`` by ``seq``, in pages, against one database snapshot:

1. rows: the seqs are 0, 1, 2, … with no gap and nothing below 0; each row's canonical text is
   a schema-v1 event whose ``seq`` is the row's, is byte for byte its own RFC 8785 (JCS) form,
   holds no float and no integer outside ±(2^53-1), and hashes to the stored ``leaf_hash``
   (SHA-256(0x00 ‖ bytes)); the index columns (``event_id``, ``ts_us``, ``action``,
   ``actor_id``, ``resource_type``, ``resource_id``) agree with it, so filters find what the
   events say;
2. the tree, rebuilt from those hashes: every complete 256-leaf block's stored tile equals its
   rebuilt root, and there is no other tile;
3. every signed tree head: its root equals the rebuilt root at its size, its Ed25519 signature
   verifies against the trust anchor, and an RFC 9162 consistency proof — built from the rebuilt
   tree with the same proof functions the API uses — verifies between it and the previous head;
   no head lies beyond the log;
4. the sequencer's stored position and frontier agree with the log (an extra row at the tail,
   or a truncated one, shows here even before the next head).

Problems are reported in log order (a row, then the tile it completes, then a head it ends), so
the first one names the first bad seq or head.

The trust anchor is either public keys given out of band (``--public-key``: what an auditor
should use, since an insider with database access can re-sign a forged tree with a key of their
own and register it beside the data) or the ``audit_signing_keys`` table. The report says which.

Speed. Rows are checked in chunks of :data:`CHUNK_ROWS` seqs, in this process or by
:class:`Workers` (processes with their own connections; on PostgreSQL inside the snapshot this
process exported, on SQLite reading the same append-only rows below the snapshot's last seq),
while this process rebuilds the tree in seq order. A SQLite file is read by plain ``sqlite3`` in
the thread that checks the rows (canonical text as bytes), which is a quarter faster than rows
handed over from the async driver's thread one GIL switch at a time. Per row: a handful of C
calls (hashlib, orjson) and a few comparisons, with the pure-Python RFC 8785 encoder only for
rows the fast path cannot vouch for (non-ASCII text, say). The tree costs one hash per node,
tiles included.
Figures: docs/benchmarks.md (``bench/audit_verify_bench.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import multiprocessing
import re
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hammerlock.audit import storage
from hammerlock.audit.merkle import (
    EMPTY_ROOT,
    CompactTree,
    consistency_proof,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_tree_head,
)
from hammerlock.audit.model import Context, Outcome, SigningKey, TreeHead
from hammerlock.audit.service import record
from hammerlock.audit.signing import key_id_for
from hammerlock.audit.storage import TILE_LEVEL, TILE_SIZE
from hammerlock.clock import SystemClock, format_rfc3339
from hammerlock.db.engine import Database, create_database
from hammerlock.db.uow import UnitOfWork
from hammerlock.settings import Settings

__all__ = [
    "CHUNK_ROWS",
    "PAGE_ROWS",
    "Problem",
    "RebuiltTree",
    "Report",
    "TrustAnchor",
    "Workers",
    "check_event",
    "check_rows",
    "record_result",
    "verify",
]

PAGE_ROWS = 10_000
CHUNK_ROWS = 100_000  # seqs per unit of work handed to a worker process
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(?:-[0-9]+)?")
MAX_PROBLEMS = 100  # reported; counting goes on
_MAX_SAFE_INT = 2**53 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_SORT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_EVENT_KEYS = frozenset(
    {
        "seq",
        "event_id",
        "ts",
        "actor",
        "action",
        "resource",
        "outcome",
        "origin",
        "request_id",
        "details",
    }
)
_ACTOR_KEYS = frozenset({"principal_id", "role", "key_id"})
_RESOURCE_KEYS = frozenset({"type", "id"})
_OUTCOME_KEYS = frozenset({"status", "code"})
_ORIGIN_KEYS = frozenset({"ip", "user_agent", "node"})
_OBJECT_KEYS = {
    "actor": _ACTOR_KEYS,
    "resource": _RESOURCE_KEYS,
    "outcome": _OUTCOME_KEYS,
    "origin": _ORIGIN_KEYS,
}
_TEXT = frozenset({str, type(None)})
_PLAIN = frozenset({str, bool, type(None)})
_SCALARS = frozenset({str, bool, int, type(None)})
_CONTAINERS = frozenset({dict, list})


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong, at a ``seq`` or at the tree head of ``head_size`` leaves."""

    message: str
    seq: int | None = None
    head_size: int | None = None
    last_seq: int | None = None  # a problem of a range of seqs (a tile): the range's last

    @property
    def order(self) -> tuple[int, int]:
        """Where it sits in the log: a row, then the tile it completes, then a head it ends."""
        if self.seq is not None:
            return (self.seq, 0)
        if self.last_seq is not None:
            return (self.last_seq, 1)
        if self.head_size is not None:
            return (self.head_size - 1, 2)
        return (-1, 0)

    def __str__(self) -> str:
        if self.seq is not None:
            return f"seq {self.seq}: {self.message}"
        if self.head_size is not None:
            return f"tree head of size {self.head_size}: {self.message}"
        return self.message


@dataclass(slots=True)
class Report:
    anchor: str
    events: int = 0
    heads: int = 0
    tiles: int = 0
    unsigned_tail: int = 0  # events after the latest signed head (not yet covered by one)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """The public keys tree heads must be signed with, by key id, and where they came from."""

    keys: Mapping[str, Ed25519PublicKey]
    source: str
    problems: tuple[Problem, ...] = ()

    @classmethod
    def out_of_band(cls, keys: Sequence[Ed25519PublicKey], source: str) -> TrustAnchor:
        by_id = {key_id_for(k.public_bytes_raw()): k for k in keys}
        ids = ", ".join(sorted(by_id))
        return cls(by_id, f"{source} (key_id {ids}), given out of band")

    @classmethod
    def from_database(cls, rows: Iterable[SigningKey]) -> TrustAnchor:
        keys: dict[str, Ed25519PublicKey] = {}
        problems: list[Problem] = []
        for row in rows:
            try:
                raw = base64.b64decode(row.public_key, validate=True)
                key = Ed25519PublicKey.from_public_bytes(raw)
            except (binascii.Error, ValueError):
                problems.append(Problem(f"audit_signing_keys: {row.key_id} is not a public key"))
                continue
            if row.algorithm != "ed25519" or key_id_for(raw) != row.key_id:
                problems.append(Problem(f"audit_signing_keys: {row.key_id} does not match its key"))
                continue
            keys[row.key_id] = key
        return cls(
            keys,
            f"the database's audit_signing_keys ({len(keys)} key(s)); an insider with database "
            "access could replace them: pass --public-key to check against a key held out of band",
            tuple(problems),
        )


# --------------------------------------------------------------------------------------------
# Rows: pure checks
# --------------------------------------------------------------------------------------------


def _unsafe_number(value: Any) -> bool:
    """True if ``value`` holds a float or an integer outside ±(2^53-1) anywhere."""
    kind = type(value)
    if kind is dict:
        values: Iterable[Any] = value.values()
    elif kind is list:
        values = value
    elif kind is int:
        return not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    else:
        return kind is float
    if _PLAIN.issuperset(map(type, values)):
        return False
    return any(map(_unsafe_number, values))


def _schema_problem(event: Any) -> str | None:
    if type(event) is not dict or event.keys() != _EVENT_KEYS:
        found = sorted(event) if type(event) is dict else type(event).__name__
        return f"not a schema v1 event (fields {found})"
    for name, keys in _OBJECT_KEYS.items():
        part = event[name]
        if type(part) is not dict or part.keys() != keys:
            return f"not a schema v1 event ({name} is not an object of {sorted(keys)})"
        for v in part.values():
            if v is not None and type(v) is not str:
                return f"not a schema v1 event ({name} holds a {type(v).__name__})"
    for name in ("event_id", "ts", "action"):
        if type(event[name]) is not str:
            return f"not a schema v1 event ({name} is not a string)"
    if event["request_id"] is not None and type(event["request_id"]) is not str:
        return "not a schema v1 event (request_id is not a string)"
    if type(event["details"]) is not dict:
        return "not a schema v1 event (details is not an object)"
    if _unsafe_number(event["details"]):
        return "details hold a float or an integer outside ±(2^53-1)"
    return None


def _is_own_jcs(event: Any, raw: bytes) -> bool:
    """``raw`` == RFC 8785 of ``event``, for an event that passed :func:`_schema_problem`
    (no float, no unsafe integer anywhere).

    Fast path: for such values orjson with sorted keys writes exactly what JCS writes when the
    text is ASCII (the same escapes, no spaces, integers in decimal); beyond ASCII, sorting by
    code point and by UTF-16 code unit can differ, so that text takes the pure-Python encoder.
    """
    try:
        if raw.isascii() and orjson.dumps(event, option=_SORT) == raw:
            return True
        return bool(rfc8785.dumps(event) == raw)
    except (orjson.JSONEncodeError, rfc8785.CanonicalizationError, ValueError, TypeError):
        return False


def _ts_us(ts: str) -> int | None:
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return (moment - _EPOCH) // _US


def check_event(row: Sequence[Any]) -> str | None:
    """What is wrong with one ``audit_log`` row (a :class:`~hammerlock.audit.storage.LogRow`),
    besides its leaf hash and its place in the sequence; None if nothing. Clear, not fast:
    :func:`check_rows` calls it only for rows its fast path did not pass."""
    seq, canonical, _leaf, event_id, ts_us, action, actor_id, resource_type, resource_id = row
    raw = canonical if isinstance(canonical, bytes) else canonical.encode()
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "canonical text is not JSON (or not UTF-8)"
    problem = _schema_problem(event)
    if problem is not None:
        return problem
    if type(event["seq"]) is not int or event["seq"] != seq:
        return f"the event inside says seq {event['seq']!r}"
    if not _is_own_jcs(event, raw):
        return "canonical text is not the RFC 8785 (JCS) form of the event it holds"
    actor, resource = event["actor"], event["resource"]
    for column, stored, held in (
        ("event_id", event_id, event["event_id"]),
        ("action", action, event["action"]),
        ("actor_id", actor_id, actor["principal_id"]),
        ("resource_type", resource_type, resource["type"]),
        ("resource_id", resource_id, resource["id"]),
        ("ts_us", ts_us, _ts_us(event["ts"])),
    ):
        if stored != held:
            return f"column {column} ({stored!r}) disagrees with the event ({held!r})"
    return None


def _has_float(value: Any) -> bool:
    values = value.values() if type(value) is dict else value
    kinds = set(map(type, values))
    if kinds <= _SCALARS:
        return False
    return float in kinds or any(_has_float(v) for v in values if type(v) in _CONTAINERS)


def check_rows(
    rows: Sequence[Sequence[Any]], expected_seq: int
) -> tuple[list[bytes], list[Problem], int]:
    """Check a page of rows in seq order, starting where ``expected_seq`` says the log is.

    Returns the leaf hashes recomputed from the rows' bytes (what the tree is rebuilt from: the
    hash of what each event says, whatever the stored hash claims), the problems, and the seq
    expected next.

    This is the hot loop of ``audit verify``, written flat on purpose: per row a few C calls
    (hashlib, orjson) and one chained comparison that is true only if :func:`check_event` would
    find nothing wrong; any other row goes to :func:`check_event` for the verdict and its words.
    The chain: every fixed field is a string or null (those compared with a column or the
    formatted ``ts_us`` are by that comparison), so a float can only hide in ``details``;
    ``OPT_STRICT_INTEGER`` refuses an unsafe integer anywhere; then orjson's sorted encoding is
    the RFC 8785 one if the text is ASCII (see :func:`_is_own_jcs`).
    """
    sha256, loads, dumps, text_types = hashlib.sha256, orjson.loads, orjson.dumps, _TEXT
    hashes: list[bytes] = []
    append = hashes.append
    problems: list[Problem] = []
    second, prefix = None, ""
    for row in rows:
        seq, raw, stored_hash, event_id, ts_us, action, actor_id, resource_type, resource_id = row
        if type(raw) is not bytes:
            raw = raw.encode()
        digest = sha256(b"\x00" + raw).digest()
        append(digest)
        if seq == expected_seq:
            expected_seq += 1
        else:
            problems.append(_sequence_problem(seq, expected_seq))
            expected_seq = max(expected_seq, seq + 1)
        if digest.hex() != stored_hash:
            problems.append(Problem("leaf_hash is not SHA-256(0x00 ‖ canonical)", seq=seq))
        if ts_us // 1_000_000 != second:  # format_rfc3339(ts_us), the date once per second
            second = ts_us // 1_000_000
            prefix = format_rfc3339(second * 1_000_000)[:19]
        try:
            event = loads(raw)
            actor, resource = event["actor"], event["resource"]
            outcome, origin, details = event["outcome"], event["origin"], event["details"]
            ok = (
                # Every key of schema v1 is looked up below, so with these counts there is no
                # other (and each part is an object: a string key into anything else raises).
                len(event) == 10
                and len(actor) == 3
                and len(resource) == 2
                and len(outcome) == 2
                and len(origin) == 3
                and event["seq"] == seq
                and type(event["seq"]) is int
                and event["event_id"] == event_id
                and event["action"] == action
                and actor["principal_id"] == actor_id
                and resource["type"] == resource_type
                and resource["id"] == resource_id
                and event["ts"] == f"{prefix}.{ts_us % 1_000_000:06d}Z"
                and text_types.issuperset(
                    map(
                        type,
                        (
                            actor["role"],
                            actor["key_id"],
                            outcome["status"],
                            outcome["code"],
                            origin["ip"],
                            origin["user_agent"],
                            origin["node"],
                            event["request_id"],
                        ),
                    )
                )
                and type(details) is dict
                and (_SCALARS.issuperset(map(type, details.values())) or not _has_float(details))
                and raw.isascii()
                and dumps(event, option=_SORT) == raw
            )
        except (
            orjson.JSONDecodeError,
            orjson.JSONEncodeError,
            AttributeError,
            KeyError,
            TypeError,
        ):
            ok = False
        if not ok and (problem := check_event(row)) is not None:
            problems.append(Problem(problem, seq=seq))
    return hashes, problems, expected_seq


def _sequence_problem(seq: int, expected_seq: int) -> Problem:
    if seq < expected_seq:
        return Problem(f"out of sequence (expected seq {expected_seq})", seq=seq)
    gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
    return Problem(f"missing (no row for seq {gap})", seq=expected_seq)


# --------------------------------------------------------------------------------------------
# The rebuilt tree: no I/O
# --------------------------------------------------------------------------------------------


def _perfect_root(leaves: list[bytes]) -> bytes:
    """MTH of a power-of-two count of leaf hashes (a tile): level by level, without the checks
    of :func:`~hammerlock.audit.merkle.root_from_leaf_hashes` (these are fresh digests)."""
    sha256, level = hashlib.sha256, leaves
    while len(level) > 1:
        level = [
            sha256(b"\x01" + a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=True)
        ]
    return level[0]


class RebuiltTree:
    """The log's tree rebuilt leaf by leaf, for checking heads and tiles and making proofs.

    It keeps the root of every complete perfect subtree of at least ``TILE_SIZE`` leaves (about
    2n/256 hashes: the tiles and everything above them), the leaves of the current, incomplete
    block, and the leaves of the blocks marked with :meth:`keep_block` (where the last head
    ended): enough for the root of any node range of the current tree whose short parts lie in
    those blocks, in O(log n) hashes: the roots at head sizes and the ranges of a consistency
    proof from the previous head to the current size.
    """

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]  # [k]: roots of complete 2**(8+k)-leaf subtrees
        self._block: list[bytes] = []
        self._size = 0
        self._last_block: tuple[int, list[bytes]] = (-1, [])
        self._kept: dict[int, list[bytes]] = {}
        self._keep_next: set[int] = set()

    @property
    def size(self) -> int:
        return self._size

    def extend(self, hashes: Sequence[bytes], on_tile: Callable[[int, bytes], None]) -> None:
        """Append leaf hashes; ``on_tile(index, root)`` for each block they complete."""
        done = 0
        while done < len(hashes):
            take = hashes[done : done + TILE_SIZE - len(self._block)]
            self._block.extend(take)
            self._size += len(take)
            done += len(take)
            if len(self._block) == TILE_SIZE:
                self._complete_block(on_tile)

    def _complete_block(self, on_tile: Callable[[int, bytes], None]) -> None:
        index = self._size // TILE_SIZE - 1
        node = _perfect_root(self._block)
        on_tile(index, node)
        self._last_block = (index, self._block)
        if index in self._keep_next:
            self._kept[index] = self._block
        self._block = []
        level = 0
        while True:
            row = self._levels[level]
            row.append(node)
            if len(row) % 2:
                return
            node = node_hash(row[-2], row[-1])
            level += 1
            if level == len(self._levels):
                self._levels.append([])

    def keep_block(self, index: int) -> None:
        """Keep the leaves of block ``index`` (complete or not) until the next :meth:`forget`."""
        last_index, last_leaves = self._last_block
        if index == last_index:
            self._kept[index] = last_leaves
        elif index == self._size // TILE_SIZE:
            self._keep_next.add(index)
        else:
            raise ValueError(f"block {index} is gone; keep blocks while they are current")

    def forget(self) -> None:
        self._kept = {}
        self._keep_next = set()

    def _leaves(self, start: int, end: int) -> list[bytes]:
        index = start // TILE_SIZE
        if (end - 1) // TILE_SIZE != index:
            raise ValueError(f"[{start}, {end}) spans blocks")
        base = index * TILE_SIZE
        if index == self._size // TILE_SIZE:
            leaves = self._block
        elif index == self._last_block[0]:
            leaves = self._last_block[1]
        elif index in self._kept:
            leaves = self._kept[index]
        else:
            raise ValueError(f"the leaves of block {index} were not kept")
        return leaves[start - base : end - base]

    def _compact(self, start: int, end: int) -> CompactTree:
        if not 0 <= start < end <= self._size:
            raise ValueError(f"[{start}, {end}) is not inside the tree of {self._size}")
        tree = CompactTree()
        position = start
        while end - position >= TILE_SIZE:
            # the largest aligned perfect subtree at `position` that fits: a stored node
            span = (end - position).bit_length() - 1
            if position:
                span = min(span, (position & -position).bit_length() - 1)
            if span < TILE_LEVEL:
                raise ValueError(f"[{start}, {end}) is not a node of the tree (unaligned)")
            tree.append_subtree(span, self._levels[span - TILE_LEVEL][position >> span])
            position += 1 << span
        if position < end:
            tree.extend(self._leaves(position, end))
        return tree

    def range_root(self, start: int, end: int) -> bytes:
        """MTH of the leaves ``[start, end)``; a :data:`~hammerlock.audit.merkle.SubtreeHasher`."""
        if end - start < TILE_SIZE:
            return root_from_leaf_hashes(self._leaves(start, end))
        return self._compact(start, end).root()

    def root(self) -> bytes:
        return self._compact(0, self._size).root() if self._size else EMPTY_ROOT

    def state(self) -> list[bytes]:
        """:meth:`CompactTree.to_state` of the whole tree (the sequencer's frontier)."""
        return self._compact(0, self._size).to_state() if self._size else []


# --------------------------------------------------------------------------------------------
# Heads: pure checks
# --------------------------------------------------------------------------------------------


def _decode_hash(value: str) -> bytes | None:
    if len(value) != 64 or value != value.lower():
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _signature_problem(head: TreeHead, anchor: TrustAnchor) -> str | None:
    key = anchor.keys.get(head.key_id)
    if key is None:
        return f"signed by key {head.key_id!r}, which is not in the trust anchor"
    try:
        signature = base64.b64decode(head.signature, validate=True)
    except (binascii.Error, ValueError):
        return "signature is not base64"
    if not verify_tree_head(key, head.size, head.root_hash, head.timestamp, signature):
        return f"signature does not verify with key {head.key_id}"
    return None


@dataclass(slots=True)
class _HeadChecker:
    anchor: TrustAnchor
    report: Report
    previous: TreeHead | None = None
    previous_ok: bool = False

    def check(self, head: TreeHead, tree: RebuiltTree) -> list[Problem]:
        """The problems of the head of ``tree.size`` leaves (the tree has just reached it)."""
        self.report.heads += 1
        problems: list[Problem] = []
        signed_root = _decode_hash(head.root_hash)
        root_ok = signed_root == tree.root()
        if signed_root is None:
            problems.append(
                Problem("root_hash is not 64 lowercase hex digits", head_size=head.size)
            )
        elif not root_ok:
            problems.append(
                Problem(
                    "root_hash differs from the root of the tree rebuilt from the log",
                    head_size=head.size,
                )
            )
        signature = _signature_problem(head, self.anchor)
        if signature is not None:
            problems.append(Problem(signature, head_size=head.size))
        previous = self.previous
        if previous is not None and signed_root is not None:
            first_root = _decode_hash(previous.root_hash) or b""
            proof = consistency_proof(previous.size, head.size, tree.range_root)
            consistent = verify_consistency(
                previous.size, head.size, first_root, signed_root, proof
            )
            if not consistent and root_ok and self.previous_ok:  # else already reported
                problems.append(
                    Problem(
                        f"no consistency proof from the head of size {previous.size}",
                        head_size=head.size,
                    )
                )
        tree.forget()
        if head.size:
            tree.keep_block((head.size - 1) // TILE_SIZE)
        self.previous, self.previous_ok = head, root_ok
        return problems


# --------------------------------------------------------------------------------------------
# The pass over the database
# --------------------------------------------------------------------------------------------


class _Chunk(NamedTuple):
    """What checking the rows of one seq range found: their leaf hashes in seq order, the
    problems, and the seq the range's rows say comes next."""

    hashes: list[bytes]
    problems: list[Problem]
    expected_next: int


async def _check_chunk(uow: UnitOfWork, lo: int, hi: int, page_rows: int) -> _Chunk:
    """Check the rows with ``lo <= seq < hi`` (from the very first row when ``lo`` is 0, so a
    negative seq is seen), in pages. A SQLite file is read and checked in one worker thread
    (:func:`~hammerlock.audit.storage.log_pages_sqlite`), a third faster than through the
    async driver's thread."""
    path = storage.sqlite_file(uow)
    if path is not None:
        try:
            return await asyncio.to_thread(_check_chunk_sqlite, path, lo, hi, page_rows)
        except sqlite3.Error:
            # A second connection cannot open this file (a read-only copy, say): read the chunk
            # again through the driver, the slower way, below.
            pass
    hashes: list[bytes] = []
    problems: list[Problem] = []
    expected = lo

    def fetch(after: int | None) -> asyncio.Future[Sequence[Sequence[Any]]]:
        return asyncio.ensure_future(
            storage.log_rows_raw(uow, after_seq=after, before_seq=hi, limit=page_rows)
        )

    following = fetch(lo - 1 if lo else None)
    try:
        while rows := await following:
            following = fetch(rows[-1][0])  # read the next page while this one is checked
            await asyncio.sleep(0)  # (let it hand its query to the driver first)
            page_hashes, page_problems, expected = check_rows(rows, expected)
            hashes.extend(page_hashes)
            problems.extend(page_problems)
    finally:
        if not following.done():  # the connection must be idle when this returns
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
    return _Chunk(hashes, problems, expected)


def _check_chunk_sqlite(path: Path, lo: int, hi: int, page_rows: int) -> _Chunk:
    hashes: list[bytes] = []
    problems: list[Problem] = []
    expected = lo
    for rows in storage.log_pages_sqlite(path, lo, hi, page_rows):
        page_hashes, page_problems, expected = check_rows(rows, expected)
        hashes.extend(page_hashes)
        problems.extend(page_problems)
    return _Chunk(hashes, problems, expected)


def _check_chunk_in_worker(
    settings: Settings, snapshot_id: str | None, lo: int, hi: int, page_rows: int
) -> _Chunk:
    """:func:`_check_chunk` in a worker process, on its own connection (PostgreSQL: inside the
    snapshot the main process exported, so it reads exactly what the main process reads)."""

    async def run() -> _Chunk:
        db = create_database(settings, SystemClock())
        try:
            async with db.snapshot() as uow:
                if snapshot_id is not None:
                    await uow.conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
                return await _check_chunk(uow, lo, hi, page_rows)
        finally:
            await db.dispose()

    return asyncio.run(run())


@dataclass(slots=True)
class _Pass:
    """One pass over the log in seq order: the rebuilt tree, heads, tiles. No I/O."""

    report: Report
    anchor: TrustAnchor
    tree: RebuiltTree = field(default_factory=RebuiltTree)
    last_signed: int = 0
    check_tiles: bool = True  # False for an archive, which holds no tiles
    heads: _HeadChecker = field(init=False)

    def __post_init__(self) -> None:
        self.heads = _HeadChecker(self.anchor, self.report)

    def feed(
        self, chunk: _Chunk, heads: Sequence[TreeHead], stored_tiles: Mapping[int, bytes]
    ) -> None:
        """Add a chunk's leaves; check the heads that end inside it (sizes in (tree size
        before, after]; or 0 on the first) and the tiles it completes."""
        report, tree, hashes = self.report, self.tree, chunk.hashes
        problems = list(chunk.problems)
        pending = deque(heads)

        def on_tile(index: int, root: bytes) -> None:
            if not self.check_tiles:
                return
            report.tiles += 1
            stored = stored_tiles.get(index)
            first, last = index * TILE_SIZE, (index + 1) * TILE_SIZE - 1
            where = f"tile {index} (seqs {first}..{last})"
            if stored is None:
                problems.append(Problem(f"{where} is missing", last_seq=last))
            elif stored != root:
                problems.append(Problem(f"{where} differs from those leaves", last_seq=last))

        done = 0
        while True:
            while pending and pending[0].size == tree.size:
                head = pending.popleft()
                problems.extend(self.heads.check(head, tree))
                self.last_signed = head.size
            if done == len(hashes):
                break
            stop = len(hashes) if not pending else done + pending[0].size - tree.size
            tree.extend(hashes[done:stop], on_tile)
            done = stop
        for problem in sorted(problems, key=lambda p: p.order):  # in log order
            report.add(problem)
        report.events += len(hashes)

    def beyond(self, heads: Sequence[TreeHead], tiles: Sequence[tuple[int, str]]) -> None:
        """Heads and tiles past the end of the log."""
        for head in heads:
            self.report.heads += 1
            self.report.add(
                Problem(
                    f"missing: a tree head signs {head.size} events but the log ends here",
                    seq=self.tree.size,
                )
            )
        for index, _ in tiles:
            self.report.add(Problem(f"tile {index} is beyond the log"))

    def state(self, state: storage.SequencerState | None) -> None:
        """The sequencer's position and frontier against the log."""
        report, events = self.report, self.tree.size
        report.unsigned_tail = events - self.last_signed
        if state is None:
            report.add(Problem("audit_state has no sequencer row"))
        elif events > state.position:
            report.add(
                Problem(
                    f"beyond the sequencer's position {state.position}: a row nobody sequenced",
                    seq=state.position,
                )
            )
        elif events < state.position:
            report.add(
                Problem(f"missing: the sequencer's position is {state.position}", seq=events)
            )
        elif _frontier(state.frontier) != [h.hex() for h in self.tree.state()]:
            report.add(Problem("the sequencer's stored frontier disagrees with the log"))


Progress = Callable[[int, int | None], None]


@dataclass(frozen=True, slots=True)
class Workers:
    """Check rows in ``jobs`` worker processes, each on its own database connection made from
    ``settings`` (the tree, heads and tiles stay in the calling process)."""

    settings: Settings
    jobs: int


async def verify(
    db: Database,
    *,
    anchor: TrustAnchor | None = None,
    progress: Progress | None = None,
    workers: Workers | None = None,
    chunk_rows: int = CHUNK_ROWS,
    page_rows: int = PAGE_ROWS,
) -> Report:
    """Check the log, its tiles, its heads and the sequencer's state (module docstring).

    ``anchor`` None: the keys in ``audit_signing_keys``. ``progress(done, total)`` is called
    after each chunk of ``chunk_rows`` seqs (``total``: the sequencer's position, None if it
    has none). Rows are checked in this process, or by ``workers``.
    """
    async with db.snapshot() as uow:
        state = await storage.sequencer_state(uow)
        if anchor is None:
            anchor = TrustAnchor.from_database(await storage.signing_keys(uow))
        report = Report(anchor=anchor.source)
        for problem in anchor.problems:
            report.add(problem)
        run = _Pass(report, anchor)
        total = None if state is None else state.position
        last = await storage.max_seq(uow)
        end = 0 if last is None else last + 1  # seqs past the snapshot's are not read
        ranges = [(lo, min(lo + chunk_rows, end)) for lo in range(0, max(end, 1), chunk_rows)]
        async for chunk in _chunks(uow, ranges, workers, page_rows):
            size_before = run.tree.size
            size_after = size_before + len(chunk.hashes)
            heads = await storage.tree_heads_upto(
                uow, after_size=size_before if size_before else -1, upto_size=size_after
            )
            tiles = await storage.tile_roots(uow, size_before // TILE_SIZE, size_after // TILE_SIZE)
            run.feed(chunk, heads, tiles)
            if progress is not None:
                progress(report.events, total)
        end = run.tree.size
        run.beyond(
            await storage.tree_heads_upto(uow, after_size=end, upto_size=None, limit=MAX_PROBLEMS),
            await storage.tiles_page(uow, after_idx=end // TILE_SIZE - 1, limit=MAX_PROBLEMS),
        )
        if strays := await storage.count_stray_tiles(uow):
            report.add(Problem(f"{strays} tile(s) at a level other than {TILE_LEVEL}"))
        run.state(state)
    return report


async def _chunks(
    uow: UnitOfWork, ranges: list[tuple[int, int]], workers: Workers | None, page_rows: int
) -> AsyncIterator[_Chunk]:
    """Each range's chunk, in order, with a gap at a range's end reported as missing seqs."""
    if workers is None or workers.jobs < 2 or len(ranges) < 2:
        for lo, hi in ranges:
            yield _with_tail_gap(await _check_chunk(uow, lo, hi, page_rows), hi)
        return
    snapshot_id = None
    if uow.is_postgres:
        exported = await uow.conn.exec_driver_sql("SELECT pg_export_snapshot()")
        snapshot_id = str(exported.scalar_one())
        if not _SNAPSHOT_ID.fullmatch(snapshot_id):
            raise RuntimeError(f"unexpected snapshot id {snapshot_id!r}")
    loop = asyncio.get_running_loop()
    # Never fork this process (it runs an event loop): workers fork from a fresh server process
    # that imported this module once, instead of each importing hammerlock again (spawn).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with concurrent.futures.ProcessPoolExecutor(workers.jobs, mp_context=context) as pool:
        in_flight: deque[tuple[int, asyncio.Future[_Chunk]]] = deque()
        pending = iter(ranges)
        try:
            while True:
                while len(in_flight) < 2 * workers.jobs and (lo_hi := next(pending, None)):
                    lo, hi = lo_hi
                    in_flight.append(
                        (
                            hi,
                            loop.run_in_executor(
                                pool,
                                _check_chunk_in_worker,
                                workers.settings,
                                snapshot_id,
                                lo,
                                hi,
                                page_rows,
                            ),
                        )
                    )
                if not in_flight:
                    return
                hi, future = in_flight.popleft()
                yield _with_tail_gap(await future, hi)
        finally:
            for _, future in in_flight:
                future.cancel()


def _with_tail_gap(chunk: _Chunk, hi: int) -> _Chunk:
    if chunk.expected_next >= hi:
        return chunk
    gap = Problem(
        f"missing (no row for seq {chunk.expected_next}..{hi - 1})", seq=chunk.expected_next
    )
    return chunk._replace(problems=[*chunk.problems, gap])


def _frontier(text: str) -> list[str] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


async def record_result(
    uow: UnitOfWork, ctx: Context, report: Report, *, out_of_band: bool
) -> None:
    """The verification is itself a read of the audit trail: record it (and its verdict, which
    the alert rules watch)."""
    first = report.first_problem
    await record(
        uow,
        ctx.event(
            "audit.verify",
            resource_type="audit_log",
            resource_id=None,
            ts_us=uow.clock.now_us(),
            outcome=Outcome.SUCCESS if report.ok else Outcome.FAILURE,
            outcome_code=None if report.ok else "audit_log_tampered",
            details={
                "events": report.events,
                "heads": report.heads,
                "problems": report.problem_count,
                "first_problem": None if first is None else str(first)[:300],
                "trust_anchor": "out_of_band" if out_of_band else "database",
            },
        ),
    )
