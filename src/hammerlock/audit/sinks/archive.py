"""Archive sink: the log as sealed, gzip-compressed JSONL segments, each with its signed head.

Layout of an archive (a local folder by default, ``<data_dir>/audit/archive/``)::

    events-000000000000-000000009999.jsonl.gz            one event per line, as served
    events-000000000000-000000009999.manifest.json       its seal
    .spool/open.jsonl                                    the segment being filled (not sealed)
    .spool/lock                                          one writer at a time (flock)

A segment holds ``segment_events`` consecutive events (default 10,000), or fewer when it has
been open ``segment_age_s`` (default 60 s) — so nothing waits long outside a sealed file. Its
manifest (format ``hammerlock.audit.segment.v1``) gives ``first_seq``, ``last_seq``, ``count``,
the ``sha256`` of the ``.jsonl.gz`` file exactly as stored, and ``tree_head``: the earliest
signed tree head that covers the segment (``size > last_seq``), read from ``audit_tree_heads``.
The earliest rather than the newest, so that the segments up to this one (plus the next, when
``size`` passes ``last_seq + 1``) are enough to check it: rebuild the tree from the archived
leaves, compare the root at ``tree_head.size``, check the Ed25519 signature. A segment whose
covering head is not signed yet stays open (the sequencer signs one at least every second while
events arrive); a full one then refuses more events until it can be sealed.

Durability: an event is acknowledged once its line is in the spool file and fsynced; a segment
and then its manifest are written atomically (temporary file, fsync, rename, fsync of the
folder). A segment counts as sealed once its manifest exists; after a crash the spool is sealed
again (same name, same bytes: gzip is written with a fixed mtime) or dropped if its manifest is
already there. Repeats from the relay are absorbed by ``seq``; a gap is refused
(:class:`SinkRejected`), never skipped. Every operation holds an exclusive ``flock`` on
``.spool/lock`` and re-reads the spool if another writer (a relay that took over, in another
process) changed it since, so two sinks on one folder never interleave or seal stale state.

Storage is an :class:`ArchiveStore` (``put``/``get``/``names``; failures are ``OSError``, a
missing object ``FileNotFoundError``): :class:`LocalArchiveStore` here, and
:class:`~hammerlock.audit.sinks.archive_s3.S3ArchiveStore` (boto3; S3 or an S3-compatible store,
optionally under Object Lock in compliance mode). The spool is always a local folder.
``hammerlock audit verify --archive`` checks either on its own
(:mod:`hammerlock.audit.archive_verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gzip
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from hammerlock.audit.model import TreeHead
from hammerlock.audit.sinks import RelayedEvent, SinkError, SinkRejected, SinkUnavailable

__all__ = [
    "MANIFEST_FORMAT",
    "ArchiveSink",
    "ArchiveStore",
    "HeadLookup",
    "LocalArchiveStore",
    "SegmentManifest",
    "manifest_name",
    "segment_name",
]

log = structlog.get_logger("hammerlock.audit.sinks.archive")

MANIFEST_FORMAT = "hammerlock.audit.segment.v1"
MAX_SEGMENT_EVENTS = 1_000_000
_MANIFEST = re.compile(r"^events-(\d{12})-(\d{12})\.manifest\.json$")
_SPOOL_FILE = "open.jsonl"
_LOCK_TIMEOUT_S = 5.0
_LOCK_POLL_S = 0.02

# The earliest signed tree head whose size is at least the argument, or None.
HeadLookup = Callable[[int], Awaitable[TreeHead | None]]


def segment_name(first_seq: int, last_seq: int) -> str:
    return f"events-{first_seq:012d}-{last_seq:012d}.jsonl.gz"


def manifest_name(first_seq: int, last_seq: int) -> str:
    return f"events-{first_seq:012d}-{last_seq:012d}.manifest.json"


@dataclass(frozen=True, slots=True)
class SegmentManifest:
    file: str
    first_seq: int
    last_seq: int
    count: int
    sha256: str
    tree_head: TreeHead

    def as_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "file": self.file,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "sha256": self.sha256,
            "tree_head": self.tree_head.as_json(),
        }


class ArchiveStore(Protocol):
    """Where sealed segments and manifests live. ``put`` is atomic and durable."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes: ...

    async def names(self) -> list[str]: ...


class LocalArchiveStore:
    """A folder. Writes go to a temporary file, are fsynced, renamed, and the folder fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(_write_atomically, self.root / _plain(name), data)

    async def get(self, name: str) -> bytes:
        return await asyncio.to_thread((self.root / _plain(name)).read_bytes)

    async def names(self) -> list[str]:
        def scan() -> list[str]:
            if not self.root.is_dir():
                return []
            return sorted(p.name for p in self.root.iterdir() if p.is_file())

        return await asyncio.to_thread(scan)


def _plain(name: str) -> str:
    if "/" in name or name.startswith(".") or not name:
        raise ValueError(f"archive object names are plain file names, not {name!r}")
    return name


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class _OpenSegment:
    first_seq: int
    last_seq: int
    count: int
    opened_at: float  # monotonic seconds


class ArchiveSink:
    def __init__(
        self,
        store: ArchiveStore,
        spool_dir: Path,
        heads: HeadLookup,
        *,
        name: str = "archive",
        segment_events: int = 10_000,
        segment_age_s: float = 60.0,
        compresslevel: int = 6,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= segment_events <= MAX_SEGMENT_EVENTS or segment_age_s <= 0:
            raise ValueError("ArchiveSink: segment_events in 1..1e6, segment_age_s > 0")
        self._store = store
        self._spool = spool_dir / _SPOOL_FILE
        self._heads = heads
        self._name = name
        self._segment_events = segment_events
        self._segment_age_s = segment_age_s
        self._compresslevel = compresslevel
        self._monotonic = monotonic
        self._loaded = False
        self._sealed_last: int | None = None  # last seq of the newest sealed segment
        self._open: _OpenSegment | None = None
        self._written = 0  # events of the page in hand that are acknowledged
        self._stamp = (0, 0, 0)  # the spool file as this writer left it: (inode, size, mtime)
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def last_seq(self) -> int | None:
        """The last seq written (sealed or in the open segment)."""
        return self._open.last_seq if self._open is not None else self._sealed_last

    async def publish(self, events: Sequence[RelayedEvent]) -> None:
        async with self._exclusive():
            fresh = self._fresh(events)
            self._written = len(events) - len(fresh)
            try:
                await self._write(fresh)
            except OSError as exc:
                self._loaded = False  # re-read the spool (a torn line is dropped) before more
                raise SinkUnavailable(
                    f"archive: {exc!r}", sink=self._name, acked=self._written
                ) from exc
            except SinkError:
                raise
            except BaseException:
                # Cancelled (the relay's timeout) or failed mid-write: a worker thread may still
                # have written, so the spool on disk, not memory, says what is there.
                self._loaded = False
                raise

    async def _write(self, fresh: Sequence[RelayedEvent]) -> None:
        while fresh:
            room = self._segment_events - (self._open.count if self._open else 0)
            if room == 0:
                if not await self._seal():
                    raise SinkUnavailable(
                        f"segment full; no signed tree head covers seq {self.last_seq} yet",
                        sink=self._name,
                        acked=self._written,
                    )
                continue
            chunk, fresh = fresh[:room], fresh[room:]
            await self._append(chunk)
            self._written += len(chunk)
        if self._due():
            await self._seal()

    async def close(self) -> None:
        """Seal the open segment if a head covers it; otherwise it stays spooled for later."""
        async with self._exclusive():
            if self._open is not None:
                await self._seal()

    async def seal_now(self) -> bool:
        """Seal the open segment now if a head covers it (tests, shutdown)."""
        async with self._exclusive():
            return self._open is not None and await self._seal()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """One writer per archive, across processes too (``flock`` on ``.spool/lock``); state
        re-read from disk if another writer touched the spool since this one last did."""
        async with self._lock:
            fd = await asyncio.to_thread(self._open_lock_file)
            try:
                await self._flock(fd)
                if self._loaded and await asyncio.to_thread(self._spool_stamp) != self._stamp:
                    self._loaded = False
                await self._load()
                try:
                    yield
                finally:
                    self._stamp = await asyncio.to_thread(self._spool_stamp)
            finally:
                os.close(fd)  # closing the file releases the lock

    def _open_lock_file(self) -> int:
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self._spool.parent / "lock", os.O_RDWR | os.O_CREAT, 0o600)

    async def _flock(self, fd: int) -> None:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SinkUnavailable(
                        "another process is writing this archive", sink=self._name
                    ) from None
                await asyncio.sleep(_LOCK_POLL_S)

    def _spool_stamp(self) -> tuple[int, int, int]:
        try:
            st = self._spool.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    # ----------------------------------------------------------------------------------------

    def _fresh(self, events: Sequence[RelayedEvent]) -> Sequence[RelayedEvent]:
        """Drop repeats (by seq); refuse a gap after what is written."""
        last = self.last_seq
        start = 0
        if last is not None:
            while start < len(events) and events[start].seq <= last:
                start += 1
        fresh = events[start:]
        expected = None if last is None else last + 1
        for i, event in enumerate(fresh):
            if expected is not None and event.seq != expected:
                raise SinkRejected(
                    f"seq {event.seq} after {expected - 1}: the archive never skips",
                    sink=self._name,
                    acked=start + i,
                )
            expected = event.seq + 1
        return fresh

    async def _append(self, events: Sequence[RelayedEvent]) -> None:
        data = b"".join(e.payload() + b"\n" for e in events)
        await asyncio.to_thread(self._append_sync, data)
        if self._open is None:
            self._open = _OpenSegment(events[0].seq, events[0].seq - 1, 0, self._monotonic())
        self._open.last_seq = events[-1].seq
        self._open.count += len(events)

    def _append_sync(self, data: bytes) -> None:
        created = not self._spool.exists()
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        with self._spool.open("ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if created:
            _fsync_dir(self._spool.parent)

    def _due(self) -> bool:
        segment = self._open
        if segment is None:
            return False
        return (
            segment.count >= self._segment_events
            or self._monotonic() - segment.opened_at >= self._segment_age_s
        )

    async def _seal(self) -> bool:
        segment = self._open
        if segment is None:
            return True
        head = await self._heads(segment.last_seq + 1)
        if head is None:
            return False
        raw = await asyncio.to_thread(self._spool.read_bytes)
        packed = gzip.compress(raw, compresslevel=self._compresslevel, mtime=0)
        manifest = SegmentManifest(
            file=segment_name(segment.first_seq, segment.last_seq),
            first_seq=segment.first_seq,
            last_seq=segment.last_seq,
            count=segment.count,
            sha256=hashlib.sha256(packed).hexdigest(),
            tree_head=head,
        )
        await self._store.put(manifest.file, packed)
        await self._store.put(
            manifest_name(segment.first_seq, segment.last_seq),
            orjson.dumps(manifest.as_json(), option=orjson.OPT_INDENT_2) + b"\n",
        )
        await asyncio.to_thread(self._drop_spool)
        self._sealed_last, self._open = segment.last_seq, None
        log.info(
            "audit.archive_segment_sealed",
            sink=self._name,
            first_seq=segment.first_seq,
            last_seq=segment.last_seq,
            tree_size=head.size,
        )
        return True

    def _drop_spool(self) -> None:
        self._spool.unlink(missing_ok=True)
        _fsync_dir(self._spool.parent)

    async def _load(self) -> None:
        if self._loaded:
            return
        try:
            names = await self._store.names()
        except OSError as exc:
            raise SinkUnavailable(f"archive store: {exc!r}", sink=self._name) from exc
        sealed = [int(m.group(2)) for m in map(_MANIFEST.match, names) if m]
        self._sealed_last = max(sealed, default=None)
        self._open = await asyncio.to_thread(self._recover_spool)
        self._loaded = True

    def _recover_spool(self) -> _OpenSegment | None:
        if not self._spool.exists():
            return None
        raw = self._spool.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a torn last line was never acknowledged
        if len(complete) != len(raw):
            _write_atomically(self._spool, complete)
        lines = complete.splitlines()
        if not lines:
            self._drop_spool()
            return None
        first, last = orjson.loads(lines[0])["seq"], orjson.loads(lines[-1])["seq"]
        if self._sealed_last is not None and last <= self._sealed_last:
            self._drop_spool()  # sealed just before a crash; its manifest is there
            return None
        return _OpenSegment(first, last, len(lines), self._monotonic())
