"""The sequencer: committed outbox events → gap-free ``seq`` → ``audit_log`` + Merkle tree.

Business transactions only INSERT into ``audit_outbox`` (no global lock, no hashing on their
path). The sequencer, leader of a lease in ``audit_state`` so it runs once across processes,
repeatedly takes the oldest committed outbox rows and, in one transaction:

1. takes them out of the outbox (one ``DELETE … RETURNING`` on PostgreSQL), gives each the
   next ``seq`` (the Merkle leaf index), renders the event exactly as ``GET /v1/audit/events``
   serves it (minus ``leaf_hash``) in RFC 8785 form — the outbox text with its ``seq`` spliced
   in, see :func:`render_log_rows` — and hashes it (RFC 9162 leaf hash);
2. appends the rows to ``audit_log`` (PostgreSQL ``COPY``, fed while later rows render),
   stores every completed 256-leaf tile root (``audit_tree_tiles``, for O(log n) proofs; the
   tree's own carries compute them) and the tree's compact frontier (``audit_state``), so a
   restart resumes without re-reading the log;
3. signs a tree head (Ed25519, once per head, never per event) at least every second while events
   arrive, and appends it to ``audit_tree_heads`` — and, after commit, to the archive file
   ``<data_dir>/audit/tree_heads.jsonl`` outside the database.

An outbox row that commits late (a lower id than rows already sequenced) simply gets the next
``seq``: the log stays gap-free and in commit order as the sequencer saw it. The lease row is also
the fence: a sequencer whose lease was taken over fails its conditional UPDATE and rolls back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import structlog

from hammerlock.audit import service as audit_service
from hammerlock.audit.jcs import canonical_json
from hammerlock.audit.merkle import CompactTree, sign_tree_head
from hammerlock.audit.model import AuditEvent, Context, TreeHead
from hammerlock.audit.signing import AuditSigner
from hammerlock.audit.storage import (
    TILE_LEVEL,
    TILE_SIZE,
    append_log,
    audit_signing_keys,
    audit_state,
    audit_tree_heads,
    audit_tree_tiles,
    take_outbox,
)
from hammerlock.clock import format_rfc3339
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork
from hammerlock.tasks import sleep_or_stop

__all__ = ["TILE_LEVEL", "TILE_SIZE", "Sequencer", "TreeHead", "canonical_event", "render_log_rows"]

log = structlog.get_logger("hammerlock.audit.sequencer")

_STATE = "sequencer"


# The leaf bytes without parsing. The outbox text is ``canonical_json`` of the event as served
# minus ``seq`` (every writer of ``audit_outbox`` goes through ``audit.service.canonical_bytes``),
# so its members are in RFC 8785 order and the last is ``ts``: ``seq`` is the only key of schema
# v1 that sorts between ``resource`` and ``ts``. JCS of the event with its seq is therefore that
# text with ``,"seq":N`` put in before ``,"ts":`` — byte for byte what parsing and re-encoding
# gives (JCS writes each member the same whatever its neighbours), at a fraction of the cost.
# Two patterns take the whole text apart around ``details`` (schema-v1 members in JCS order,
# strings and nulls where schema v1 has them), which also finds the index columns; a text of any
# other shape takes the parse-and-encode path. `audit verify` checks every stored row in full.
_STR = rb'"[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*"'  # a JSON string token
_EVENT_HEAD = re.compile(
    (
        rb'\{"action":(<s>),"actor":\{"key_id":<n>,"principal_id":(<n>),"role":<n>\},'
        rb'"details":\{'
    )
    .replace(b"<n>", b"(?:null|<s>)")
    .replace(b"<s>", _STR)
)
_EVENT_TAIL_AT = b'},"event_id":'  # the last one is after details (no string holds a bare ")
_EVENT_TAIL = re.compile(
    (
        rb'\},"event_id":(<s>),"origin":\{"ip":<n>,"node":<n>,"user_agent":<n>\},'
        rb'"outcome":\{"code":<n>,"status":<s>\},"request_id":<n>,'
        rb'"resource":\{"id":(<n>),"type":(<n>)\}(),"ts":<s>\}'
    )
    .replace(b"<n>", b"(?:null|<s>)")
    .replace(b"<s>", _STR)
)


def _text(token: bytes) -> Any:
    """A JSON string token (or ``null``) of canonical text, decoded."""
    if token == b"null":
        return None
    if b"\\" in token:
        return orjson.loads(token)
    return token[1:-1].decode()


def _leaf_fast(text: bytes, seq: int) -> tuple[bytes, tuple[Any, ...]] | None:
    """The leaf bytes and index columns (event_id, action, actor_id, resource_type,
    resource_id) of outbox text of the expected shape; None for any other."""
    head = _EVENT_HEAD.match(text)
    if head is None:
        return None
    at = text.rfind(_EVENT_TAIL_AT)
    if at < head.end():
        return None
    tail = _EVENT_TAIL.fullmatch(text, at)
    if tail is None:
        return None
    cut = tail.start(4)
    event_id, resource_id, resource_type = tail.group(1, 2, 3)
    action, actor_id = head.group(1, 2)
    return b'%s,"seq":%d%s' % (text[:cut], seq, text[cut:]), (
        _text(event_id),
        _text(action),
        _text(actor_id),
        _text(resource_type),
        _text(resource_id),
    )


def _leaf_parsed(text: bytes, seq: int) -> tuple[bytes, tuple[Any, ...]]:
    """:func:`_leaf_fast` the slow way, for any text: parse and encode again."""
    event = orjson.loads(text)
    canonical = canonical_event(event, seq, parsed_from=text)
    actor, resource = event.get("actor") or {}, event.get("resource") or {}
    return canonical, (
        event["event_id"],
        event["action"],
        actor.get("principal_id"),
        resource.get("type"),
        resource.get("id"),
    )


def render_log_rows(
    rows: Sequence[Sequence[Any]], start: int, hashes: list[bytes]
) -> Iterator[tuple[Any, ...]]:
    """``audit_log`` rows (in :data:`~hammerlock.audit.storage.LOG_COLUMNS` order) for outbox
    rows ``(id, ts_us, event)`` given seqs from ``start``; each one's leaf hash is appended to
    ``hashes`` as it is rendered (a generator: ``COPY`` sends rows while later ones render)."""
    sha256, fast, parsed = hashlib.sha256, _leaf_fast, _leaf_parsed
    for seq, (_id, ts_us, stored) in enumerate(rows, start):
        text = stored.encode()
        canonical, columns = fast(text, seq) or parsed(text, seq)
        digest = sha256(b"\x00" + canonical).digest()  # merkle.leaf_hash, inlined
        hashes.append(digest)
        event_id, action, actor_id, resource_type, resource_id = columns
        yield (
            seq,
            event_id,
            int(ts_us),
            action,
            actor_id,
            resource_type,
            resource_id,
            canonical.decode(),
            digest.hex(),
        )


def canonical_event(event: dict[str, Any], seq: int, *, parsed_from: bytes | None = None) -> bytes:
    """The leaf's bytes: RFC 8785 JCS of the event as served, with its ``seq`` (``parsed_from``:
    the outbox text ``event`` was parsed from, see :func:`~hammerlock.audit.jcs.canonical_json`;
    then ``event`` is the caller's to change, and gets its ``seq`` in place)."""
    if parsed_from is None:
        return canonical_json({**event, "seq": seq})
    event["seq"] = seq
    return canonical_json(event, parsed_from=parsed_from)


class Sequencer:
    def __init__(
        self,
        db: Database,
        signer: AuditSigner,
        *,
        node: str,
        archive_dir: Path | None = None,
        batch_max: int = 5_000,
        lease_s: float = 10,
        head_interval_s: float = 1.0,
    ) -> None:
        self._db = db
        self._signer = signer
        self._archive_dir = archive_dir
        self._batch_max = batch_max
        self._lease_us = int(lease_s * 1_000_000)
        self._head_interval_us = int(head_interval_s * 1_000_000)
        self.owner = f"{node}:{os.getpid()}:{secrets.token_hex(4)}"[:128]
        self._ctx = Context.system("audit.sequencer", node=node)
        # Lifecycle events (start, heartbeat, stop) are recorded by the long-running loop only,
        # so direct run_once() calls (tests, tools) sequence exactly what was committed.
        self._lifecycle = False
        self._heartbeat_us: int | None = None
        self.heartbeat_interval_us = 60_000_000

    async def run_once(self) -> int:
        """Sequence what is committed now (up to ``batch_max``); the number of events appended."""
        async with self._db.transaction() as uow:
            now = uow.clock.now_us()
            state = await self._claim(uow, now)
            if state is None:
                self._heartbeat_us = None  # not the leader (any more)
                return 0
            if self._lifecycle:
                await self._record_lifecycle(uow, now)
            rows = await take_outbox(uow, self._batch_max)
            start = int(state["position"])
            tree = CompactTree.from_state(
                start, [bytes.fromhex(h) for h in orjson.loads(state["frontier"])]
            )
            if rows:
                hashes: list[bytes] = []
                await append_log(uow, render_log_rows(rows, start, hashes))
                if len(hashes) != len(rows):
                    raise RuntimeError("audit sequencer: rows and leaf hashes disagree")
                tiles = tree.extend_tiles(hashes, TILE_LEVEL)
                if tiles:
                    await uow.conn.execute(
                        audit_tree_tiles.insert(),
                        [{"level": TILE_LEVEL, "idx": i, "hash": h.hex()} for i, h in tiles],
                    )
            head = None
            last_head_us = int(state["last_head_us"])
            head_due = now - last_head_us >= self._head_interval_us or len(rows) < self._batch_max
            if rows and head_due:
                head = await self._sign_head(uow, tree, now)
                last_head_us = now
            fenced = await uow.conn.execute(
                audit_state.update()
                .where(audit_state.c.name == _STATE, audit_state.c.owner == self.owner)
                .values(
                    position=tree.size,
                    frontier=orjson.dumps([h.hex() for h in tree.to_state()]).decode(),
                    last_head_us=last_head_us,
                    updated_us=now,
                )
            )
            if fenced.rowcount != 1:
                raise RuntimeError("audit sequencer lost its lease mid-batch; rolled back")
        if head is not None:
            self._archive_head(head)
        return len(rows)

    async def run_forever(self, interval_s: float = 0.2, stop: asyncio.Event | None = None) -> None:
        self._lifecycle = True
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                appended = await self.run_once()
            except Exception:  # the loop must outlive a transient DB error; logged with trace
                log.exception("audit.sequencer_failed")
                appended = 0
            if appended < self._batch_max:
                await sleep_or_stop(stop, interval_s)  # the loop's test sees a stop

    async def release(self) -> None:
        """Give up the lease (on shutdown) so another process takes over at once."""
        async with self._db.transaction() as uow:
            released = await uow.conn.execute(
                audit_state.update()
                .where(audit_state.c.name == _STATE, audit_state.c.owner == self.owner)
                .values(owner=None, lease_expires_us=0)
            )
            if released.rowcount == 1 and self._lifecycle:
                await audit_service.record(uow, self._lifecycle_event("audit.sequencer.stop", uow))

    def _lifecycle_event(self, action: str, uow: UnitOfWork) -> AuditEvent:
        return self._ctx.event(
            action,
            resource_type="audit_sequencer",
            resource_id=self.owner,
            ts_us=uow.clock.now_us(),
        )

    async def _record_lifecycle(self, uow: UnitOfWork, now: int) -> None:
        """Start when this process becomes leader, then a heartbeat every minute (the alert
        rules' dead-man's switch watches for them)."""
        if self._heartbeat_us is None:
            action = "audit.sequencer.start"
        elif now - self._heartbeat_us >= self.heartbeat_interval_us:
            action = "audit.heartbeat"
        else:
            return
        await audit_service.record(uow, self._lifecycle_event(action, uow))
        self._heartbeat_us = now

    async def _claim(self, uow: UnitOfWork, now: int) -> sa.RowMapping | None:
        s = audit_state.c
        claimed = await uow.conn.execute(
            audit_state.update()
            .where(
                s.name == _STATE,
                sa.or_(s.owner == self.owner, s.owner.is_(None), s.lease_expires_us < now),
            )
            .values(owner=self.owner, lease_expires_us=now + self._lease_us)
        )
        if claimed.rowcount != 1:
            return None
        return (
            (await uow.conn.execute(sa.select(audit_state).where(s.name == _STATE)))
            .mappings()
            .one()
        )

    async def _sign_head(self, uow: UnitOfWork, tree: CompactTree, now: int) -> TreeHead:
        await self._register_key(uow, now)
        root_hex = tree.root().hex()
        timestamp = format_rfc3339(now)
        signature = sign_tree_head(self._signer.private_key, tree.size, root_hex, timestamp)
        head = TreeHead(
            size=tree.size,
            root_hash=root_hex,
            timestamp=timestamp,
            key_id=self._signer.key_id,
            signature=base64.b64encode(signature).decode(),
        )
        await uow.conn.execute(audit_tree_heads.insert(), [{**head.as_json(), "ts_us": now}])
        return head

    async def _register_key(self, uow: UnitOfWork, now: int) -> None:
        known = await uow.conn.execute(
            sa.select(audit_signing_keys.c.key_id).where(
                audit_signing_keys.c.key_id == self._signer.key_id
            )
        )
        if known.first() is None:
            await uow.conn.execute(
                audit_signing_keys.insert().values(
                    key_id=self._signer.key_id,
                    algorithm="ed25519",
                    public_key=self._signer.public_b64,
                    created_us=now,
                )
            )

    def _archive_head(self, head: TreeHead) -> None:
        if self._archive_dir is None:
            return
        self._archive_dir.mkdir(parents=True, exist_ok=True)
        with (self._archive_dir / "tree_heads.jsonl").open("ab") as fh:
            fh.write(orjson.dumps(head.as_json()) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
