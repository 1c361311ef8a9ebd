"""Checking an archive on its own: ``hammerlock audit verify --archive DIR|s3://bucket/prefix``.

The archive sink (:mod:`hammerlock.audit.sinks.archive`) leaves sealed segments, each a gzip of
events as served (one JSON object per line, with ``leaf_hash``) beside a manifest that carries
the earliest signed tree head covering it. This check needs nothing but those files and, for
the signatures, a public key — the database may be gone:

1. segments: manifests are read in ``first_seq`` order; each names its segment file, its seq
   range and count, and the SHA-256 of the file; the seqs run 0, 1, 2, … across segments, with
   no gap (a dropped segment) and no repeat (an overlapping one); a segment file without a
   manifest before the last sealed one is reported too;
2. events: each line is split back into the leaf bytes (the event minus ``leaf_hash``: the
   archive writes ``leaf bytes[:-1] + ',"leaf_hash":"…"}'``), which must be the RFC 8785 form
   of a schema-v1 event with the expected ``seq`` and hash to the ``leaf_hash`` beside it — the
   row checks of ``audit verify`` (:func:`hammerlock.audit.verify.check_rows`);
3. heads: the tree is rebuilt from the leaf bytes (never from the stored hashes), and each
   manifest's head is checked when the tree reaches its size: its root, its Ed25519 signature
   against the trust anchor, and an RFC 9162 consistency proof from the previous head.

What an archive alone cannot show: a head signed over more events than the archive holds yet
(the newest segment's head may cover events still in the sink's spool) has its signature
checked but not its root — it is counted in ``heads_beyond``; and a dropped *last* segment
leaves an archive that is consistent, only shorter: compare ``events`` with the live log's size
or its latest head (``audit verify`` against the database does).

A segment that cannot be read (no file, not gzip, a manifest that is not one) ends the pass:
without its leaves no later root can be rebuilt. Problems name the segment file and the seq.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from hammerlock.audit.model import TreeHead
from hammerlock.audit.sinks.archive import MANIFEST_FORMAT, ArchiveStore, segment_name
from hammerlock.audit.verify import (
    Problem,
    Report,
    TrustAnchor,
    _Chunk,
    _Pass,
    _signature_problem,
    _ts_us,
    check_rows,
)

__all__ = ["ArchiveReport", "verify_archive"]

_MANIFEST = re.compile(r"^events-(\d{12})-(\d{12})\.manifest\.json$")
_SEGMENT = re.compile(r"^events-(\d{12})-(\d{12})\.jsonl\.gz$")
_SPLICE = b',"leaf_hash":"'
_HEX = re.compile(rb"^[0-9a-f]{64}$")
MAX_SEGMENT_BYTES = 512 * 1024 * 1024  # a segment holds at most 1e6 events of at most 8 KiB


@dataclass(slots=True)
class ArchiveReport:
    report: Report
    segments: int = 0
    heads_beyond: int = 0  # heads over more events than the archive holds: signature only
    segment_of: dict[int, str] = field(default_factory=dict)  # first seq -> segment file

    @property
    def ok(self) -> bool:
        return self.report.ok


Progress = Callable[[int, int], None]


class _Unreadable(Exception):
    """A segment whose events cannot be had; the pass stops there."""


@dataclass(frozen=True, slots=True)
class _Manifest:
    name: str
    file: str
    first_seq: int
    last_seq: int
    count: int
    sha256: str
    head: TreeHead


def _manifest(name: str, data: bytes) -> _Manifest:
    match = _MANIFEST.match(name)
    if match is None:
        raise _Unreadable(f"{name}: not a manifest name")
    try:
        doc = orjson.loads(data)
        head_doc = doc["tree_head"]
        manifest = _Manifest(
            name=name,
            file=_text(doc["file"]),
            first_seq=_int(doc["first_seq"]),
            last_seq=_int(doc["last_seq"]),
            count=_int(doc["count"]),
            sha256=_text(doc["sha256"]),
            head=TreeHead(
                size=_int(head_doc["size"]),
                root_hash=_text(head_doc["root_hash"]),
                timestamp=_text(head_doc["timestamp"]),
                key_id=_text(head_doc["key_id"]),
                signature=_text(head_doc["signature"]),
            ),
        )
        fmt = doc["format"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise _Unreadable(f"{name}: not a {MANIFEST_FORMAT} manifest ({exc!r})") from None
    first, last = int(match.group(1)), int(match.group(2))
    if fmt != MANIFEST_FORMAT:
        raise _Unreadable(f"{name}: format {fmt!r}, not {MANIFEST_FORMAT}")
    if (manifest.first_seq, manifest.last_seq) != (first, last) or manifest.file != segment_name(
        first, last
    ):
        raise _Unreadable(f"{name}: its fields name another segment ({manifest.file})")
    if manifest.count != last - first + 1:
        raise _Unreadable(f"{name}: count {manifest.count} for seqs {first}..{last}")
    return manifest


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"{value!r} is not an integer")
    return value


def _text(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"{value!r} is not a string")
    return value


def _rows(lines: list[bytes], first_seq: int) -> tuple[list[tuple[Any, ...]], list[Problem]]:
    """Archived lines back into ``audit_log``-shaped rows for :func:`check_rows`: the leaf bytes
    spliced out of each line, the index columns read from the event itself (so only the event's
    own consistency, its seq and its hash are checked)."""
    rows: list[tuple[Any, ...]] = []
    problems: list[Problem] = []
    for position, line in enumerate(lines, first_seq):
        at = line.rfind(_SPLICE)
        leaf_hex = line[at + len(_SPLICE) : -2] if at > 0 else b""
        if at <= 0 or not line.endswith(b'"}') or not _HEX.match(leaf_hex):
            problems.append(Problem("not an event as archived (no leaf_hash at its end)", position))
            canonical, leaf_hex = line, b""
        else:
            canonical = line[:at] + b"}"
        try:
            event = orjson.loads(canonical)
            seq = event["seq"] if type(event["seq"]) is int else position
            actor, resource = event["actor"], event["resource"]
            ts_us = _ts_us(event["ts"])
            row = (
                seq,
                canonical,
                leaf_hex.decode(),
                event["event_id"],
                -1 if ts_us is None else ts_us,
                event["action"],
                actor["principal_id"],
                resource["type"],
                resource["id"],
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            row = (position, canonical, leaf_hex.decode(), None, -1, None, None, None, None)
        rows.append(row)
    return rows, problems


def _check_segment(manifest: _Manifest, packed: bytes, expected: int) -> _Chunk:
    where = manifest.file
    problems: list[Problem] = []
    if hashlib.sha256(packed).hexdigest() != manifest.sha256:
        problems.append(
            Problem(f"{where}: the file's SHA-256 differs from its manifest", manifest.first_seq)
        )
    try:
        raw = gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as exc:
        raise _Unreadable(f"{where}: not a gzip file ({exc})") from None
    if not raw.endswith(b"\n"):
        raise _Unreadable(f"{where}: does not end with a whole line")
    lines = raw[:-1].split(b"\n")
    if len(lines) != manifest.count:
        problems.append(
            Problem(
                f"{where}: holds {len(lines)} events, its manifest says {manifest.count}",
                manifest.first_seq,
            )
        )
    rows, line_problems = _rows(lines, manifest.first_seq)
    hashes, row_problems, following = check_rows(rows, expected)
    problems.extend(
        Problem(f"{where}: {p.message}", p.seq, p.head_size, p.last_seq)
        for p in (*line_problems, *row_problems)
    )
    if following != manifest.last_seq + 1 and not any(p.seq is not None for p in row_problems):
        problems.append(
            Problem(f"{where}: ends at seq {following - 1}, not {manifest.last_seq}", following)
        )
    return _Chunk(hashes, sorted(problems, key=lambda p: p.order), following)


async def verify_archive(
    store: ArchiveStore, *, anchor: TrustAnchor, progress: Progress | None = None
) -> ArchiveReport:
    """Check every sealed segment of ``store`` in seq order (module docstring)."""
    result = ArchiveReport(Report(anchor=anchor.source))
    report = result.report
    for problem in anchor.problems:
        report.add(problem)
    names = await store.names()
    manifests = sorted((int(m.group(1)), n) for n in names if (m := _MANIFEST.match(n)) is not None)
    _orphans(result, names, manifests)
    run = _Pass(report, anchor, check_tiles=False)
    heads_seen: dict[int, set[TreeHead]] = {}
    sealing: dict[int, str] = {}  # head size -> the first segment whose manifest carries it
    pending: list[TreeHead] = []  # heads over more leaves than the tree has yet
    for done, (first_seq, name) in enumerate(manifests, 1):
        expected = run.tree.size
        try:
            manifest = _manifest(name, await store.get(name))
            packed = await _segment_bytes(store, manifest)
            chunk = _check_segment(manifest, packed, expected)
        except _Unreadable as exc:
            report.add(Problem(f"{exc} — the segments after it are not checked", expected))
            break
        result.segments += 1
        result.segment_of[first_seq] = manifest.file
        if manifest.head.size <= manifest.last_seq:
            chunk.problems.append(
                Problem(
                    f"{manifest.file}: its tree head (size {manifest.head.size}) does not cover it",
                    head_size=manifest.head.size,
                )
            )
        elif manifest.head not in heads_seen.setdefault(manifest.head.size, set()):
            heads_seen[manifest.head.size].add(manifest.head)
            pending.append(manifest.head)
            sealing.setdefault(manifest.head.size, manifest.file)
        end = run.tree.size + len(chunk.hashes)
        pending.sort(key=lambda h: h.size)
        due = [h for h in pending if h.size <= end]
        pending = [h for h in pending if h.size > end]
        run.feed(chunk, due, {})
        if progress is not None:
            progress(done, len(manifests))
    for head in pending:  # over events the archive does not hold (yet): signature only
        result.heads_beyond += 1
        report.heads += 1
        if (signature := _signature_problem(head, anchor)) is not None:
            report.add(Problem(signature, head_size=head.size))
    report.unsigned_tail = run.tree.size - run.last_signed
    # In log order (a segment file without a manifest is found before the pass), so the first
    # names the first bad seq or segment.
    report.problems = sorted(
        (_naming_segment(p, sealing) for p in report.problems), key=lambda p: p.order
    )
    return result


def _naming_segment(problem: Problem, sealing: dict[int, str]) -> Problem:
    """A head's problem, said with the segment whose seal carries the head."""
    if problem.seq is not None or problem.head_size not in sealing:
        return problem
    file = sealing[problem.head_size]
    return Problem(f"{problem.message} (the seal of {file})", head_size=problem.head_size)


async def _segment_bytes(store: ArchiveStore, manifest: _Manifest) -> bytes:
    try:
        packed = await store.get(manifest.file)
    except (FileNotFoundError, KeyError):
        raise _Unreadable(f"{manifest.file}: missing (its manifest is there)") from None
    if len(packed) > MAX_SEGMENT_BYTES:
        raise _Unreadable(f"{manifest.file}: larger than {MAX_SEGMENT_BYTES} bytes")
    return packed


def _orphans(result: ArchiveReport, names: list[str], manifests: list[tuple[int, str]]) -> None:
    """Segment files with no manifest. One past the last sealed segment is the sink's crash
    window (file written, manifest not yet: it seals it again); one before it is not."""
    sealed = {n.replace(".manifest.json", ".jsonl.gz") for _, n in manifests}
    last_sealed = max((first for first, _ in manifests), default=-1)
    for name in names:
        match = _SEGMENT.match(name)
        if match is None or name in sealed or int(match.group(1)) > last_sealed:
            continue
        result.report.add(
            Problem(f"{name}: a segment file without a manifest", int(match.group(1)))
        )
