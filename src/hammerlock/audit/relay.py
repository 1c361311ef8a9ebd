"""The relay: ships ``audit_log`` to one sink, in ``seq`` order, at least once.

One :class:`Relay` drives one :class:`~hammerlock.audit.sinks.AuditSink`. Its state is the row
``relay:<sink name>`` of ``audit_state``: ``position`` (the next seq to ship: every event below
it is acknowledged by the sink) and a lease (``owner``, ``lease_expires_us``), so the position
survives restarts and the relay runs once across processes. Each page:

1. claim or renew the lease (a short write transaction; the row is inserted on first use), and
   read ``position``. A relay that does not hold the lease is a standby and does nothing more —
   so a relay whose lease was taken over stops before it publishes another page;
2. read up to ``page_size`` events from ``position`` and the log size (a read-only
   transaction: the relay never writes the log, so a sink outage cannot hold up a business
   write). After a full page the next one is read ahead while this one is out; it is used
   only if the position then is where it starts;
3. publish the page and await the sink's acknowledgement, within ``publish_timeout_s`` and
   within what is left of the lease (sinks' own timeouts are shorter, so they can report how
   much of the page was acknowledged);
4. advance ``position`` past the page, conditional on still owning the lease *and* on the
   position being the one read in 1 (a write transaction). If the lease was lost meanwhile the
   page was published twice at worst, which the sink's deduplication by ``event_id`` absorbs.

On a sink failure (:class:`~hammerlock.audit.sinks.SinkError`) the acknowledged prefix
(``SinkError.acked``) is kept, and :meth:`Relay.run_forever` backs off exponentially (from
``backoff_initial_s`` to ``backoff_max_s``) and resends from the first unacknowledged event;
nothing is ever skipped. ``lag`` (log size minus position) is measured on every page; past
``lag_alert_threshold`` the ``on_lag(sink, lag)`` hook fires (a structured warning by default),
again every ``lag_alert_repeat_s`` while it lasts.

Errors::

    Exception
     └── RelayLeaseLost   another relay took the lease over: this one is a standby now
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from hammerlock.audit.model import TreeHead
from hammerlock.audit.sinks import AuditSink, RelayedEvent, SinkError, SinkUnavailable
from hammerlock.audit.storage import audit_log, audit_state, audit_tree_heads
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork

__all__ = [
    "LagHook",
    "Relay",
    "RelayLeaseLost",
    "build_relays",
    "log_lag",
    "state_name",
    "tree_head_covering",
]

log = structlog.get_logger("hammerlock.audit.relay")

MAX_PAGE_SIZE = 10_000
_STATE_PREFIX = "relay:"
_STATE_NAME_MAX = 64

LagHook = Callable[[str, int], None]


def log_lag(sink: str, lag: int) -> None:
    """The default lag alert: one structured warning (PCI DSS 10.7.2: a failing log mechanism)."""
    log.warning("audit.relay_lagging", sink=sink, lag=lag)


def state_name(sink_name: str) -> str:
    name = _STATE_PREFIX + sink_name
    if not sink_name or len(name) > _STATE_NAME_MAX:
        raise ValueError(f"sink name must be 1..{_STATE_NAME_MAX - len(_STATE_PREFIX)} chars")
    return name


class RelayLeaseLost(Exception):
    """Another relay owns ``relay:<sink>`` now; this one stops publishing."""

    code = "relay_lease_lost"


class Relay:
    def __init__(
        self,
        db: Database,
        sink: AuditSink,
        *,
        node: str,
        page_size: int = 1_000,
        lease_s: float = 30.0,
        publish_timeout_s: float = 10.0,
        poll_interval_s: float = 0.2,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 30.0,
        lag_alert_threshold: int = 10_000,
        lag_alert_repeat_s: float = 60.0,
        on_lag: LagHook | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        start: Literal["beginning", "end"] = "beginning",
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        if not 0 < publish_timeout_s <= lease_s / 2:
            raise ValueError("publish_timeout_s must be positive and at most half of lease_s")
        if not 0 < backoff_initial_s <= backoff_max_s or poll_interval_s <= 0:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s and poll_interval_s > 0")
        self._db = db
        self.sink = sink
        self.state = state_name(sink.name)
        self.owner = f"{node}:{os.getpid()}:{secrets.token_hex(4)}"[:128]
        self._page_size = page_size
        self._lease_s = lease_s
        self._publish_timeout_s = publish_timeout_s
        self._poll_interval_s = poll_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._lag_threshold = lag_alert_threshold
        self._lag_repeat_s = lag_alert_repeat_s
        self._on_lag = on_lag or log_lag
        self._monotonic = monotonic
        self._start = start
        self._lease_deadline = 0.0  # monotonic time by which this relay stops publishing
        self._row_ready = False
        self._alerted_at: float | None = None
        self._ahead: tuple[int, asyncio.Future[list[RelayedEvent]]] | None = None
        self.is_leader = False
        self.position: int | None = None  # next seq to ship, as of the last page
        self.log_size: int | None = None
        self.failures = 0  # consecutive failed pages

    @property
    def lag(self) -> int:
        """Events in the log not yet acknowledged by the sink (0 before the first page)."""
        if self.position is None or self.log_size is None:
            return 0
        return max(0, self.log_size - self.position)

    async def run_once(self) -> int:
        """Ship one page; the number of events the sink acknowledged (0: idle or standby).

        Raises :class:`SinkError` when the sink failed (its acknowledged prefix is kept) and
        :class:`RelayLeaseLost` when the lease moved to another relay mid-page.
        """
        position = await self._claim()
        if position is None:
            self._drop_read_ahead()
            return 0
        page = await self._page_at(position)
        self._check_lag()
        if not page:
            await self._publish(page)  # a heartbeat: sinks with timed work do it now
            return 0
        if len(page) == self._page_size:  # more is waiting: read it while this page is out
            self._read_ahead(page[-1].seq + 1)
        try:
            await self._publish(page)
        except SinkError as exc:
            self.failures += 1
            if exc.acked > 0:
                await self._advance(position, page[min(exc.acked, len(page)) - 1].seq + 1)
            raise
        await self._advance(position, page[-1].seq + 1)
        self.failures = 0
        return len(page)

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Relay until ``stop`` is set (or the task is cancelled); never raises a sink error."""
        stop = stop or asyncio.Event()
        backoff_s = self._backoff_initial_s
        while not stop.is_set():
            try:
                shipped = await self.run_once()
            except SinkError as exc:
                log.warning(
                    "audit.relay_sink_failed",
                    sink=self.sink.name,
                    code=exc.code,
                    detail=exc.detail,
                    position=self.position,
                    lag=self.lag,
                    failures=self.failures,
                    retry_in_s=backoff_s,
                )
                await _sleep(stop, backoff_s)
                backoff_s = min(backoff_s * 2, self._backoff_max_s)
                continue
            except RelayLeaseLost:
                log.warning("audit.relay_lease_lost", sink=self.sink.name, owner=self.owner)
                await _sleep(stop, self._poll_interval_s)
                continue
            except Exception:  # a database error must not end the relay; logged with its trace
                log.exception("audit.relay_failed", sink=self.sink.name)
                await _sleep(stop, backoff_s)
                backoff_s = min(backoff_s * 2, self._backoff_max_s)
                continue
            backoff_s = self._backoff_initial_s
            if shipped < self._page_size:
                await _sleep(stop, self._poll_interval_s)

    async def release(self) -> None:
        """Give up the lease (on shutdown) so a standby takes over at once."""
        self._drop_read_ahead()
        async with self._db.transaction() as uow:
            await uow.conn.execute(
                audit_state.update()
                .where(audit_state.c.name == self.state, audit_state.c.owner == self.owner)
                .values(owner=None, lease_expires_us=0)
            )
        self.is_leader = False
        self._lease_deadline = 0.0

    async def close(self) -> None:
        """Release the lease and close the sink."""
        try:
            await self.release()
        finally:
            await self.sink.close()

    async def measure_lag(self) -> int:
        """Log size minus the stored position, read now (for health checks and tests)."""
        async with self._db.transaction(write=False) as uow:
            size = await _log_size(uow)
            stored = await uow.conn.execute(
                sa.select(audit_state.c.position).where(audit_state.c.name == self.state)
            )
            position = stored.scalar_one_or_none() or 0
        return max(0, size - int(position))

    # ----------------------------------------------------------------------------------------

    async def _claim(self) -> int | None:
        """Claim or renew the lease; the stored position when this relay holds it."""
        s = audit_state.c
        started = self._monotonic()  # the lease runs from before the claim, not after it
        position: int | None = None
        async with self._db.transaction() as uow:
            now = uow.clock.now_us()
            if not self._row_ready:
                await self._insert_row(uow)
            claimed = await uow.conn.execute(
                audit_state.update()
                .where(
                    s.name == self.state,
                    sa.or_(s.owner == self.owner, s.owner.is_(None), s.lease_expires_us < now),
                )
                .values(
                    owner=self.owner,
                    lease_expires_us=now + int(self._lease_s * 1_000_000),
                    updated_us=now,
                )
            )
            if claimed.rowcount == 1:
                position = (
                    await uow.conn.execute(sa.select(s.position).where(s.name == self.state))
                ).scalar_one()
        self._row_ready = True
        if position is None:
            if self.is_leader:
                log.warning("audit.relay_standby", sink=self.sink.name, owner=self.owner)
            self.is_leader = False
            return None
        if not self.is_leader:
            log.info("audit.relay_leader", sink=self.sink.name, owner=self.owner, position=position)
        self._lease_deadline = started + self._lease_s * 0.9
        self.is_leader = True
        self.position = int(position)
        return self.position

    async def _insert_row(self, uow: UnitOfWork) -> None:
        """The relay's row on first use: at seq 0, or at the log's end with ``start="end"`` (a
        sink that only acts on what happens from now on, like the alert rules, must not replay
        a history it was never running for). An existing row is never moved."""
        insert = pg_insert(audit_state) if uow.is_postgres else sqlite_insert(audit_state)
        position = 0 if self._start == "beginning" else await _log_size(uow)
        inserted = await uow.conn.execute(
            insert.values(
                name=self.state, owner=None, lease_expires_us=0, position=position
            ).on_conflict_do_nothing(index_elements=[audit_state.c.name])
        )
        if inserted.rowcount == 1 and position:
            log.info("audit.relay_starts_at_log_end", sink=self.sink.name, position=position)
        self._row_ready = True

    async def _page_at(self, position: int) -> list[RelayedEvent]:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            start, task = ahead
            if start == position:
                return await task
            _discard(task)  # the position moved (a failure, another relay): read afresh
        return await self._read_page(position)

    def _read_ahead(self, position: int) -> None:
        self._drop_read_ahead()
        self._ahead = (position, asyncio.ensure_future(self._read_page(position)))

    def _drop_read_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            _discard(ahead[1])

    async def _read_page(self, position: int) -> list[RelayedEvent]:
        c = audit_log.c
        async with self._db.transaction(write=False) as uow:
            rows = (
                await uow.conn.execute(
                    sa.select(
                        c.seq,
                        c.event_id,
                        c.action,
                        c.resource_type,
                        c.resource_id,
                        c.canonical,
                        c.leaf_hash,
                    )
                    .where(c.seq >= position)
                    .order_by(c.seq)
                    .limit(self._page_size)
                )
            ).all()
            self.log_size = max(await _log_size(uow), position + len(rows))
        page: list[RelayedEvent] = []
        for expected, row in enumerate(rows, position):
            if row.seq != expected:  # the log is gap-free; never ship past a hole
                log.error("audit.relay_gap", sink=self.sink.name, expected=expected, seq=row.seq)
                break
            page.append(RelayedEvent(*row))
        return page

    async def _publish(self, page: Sequence[RelayedEvent]) -> None:
        budget_s = min(self._publish_timeout_s, self._lease_deadline - self._monotonic())
        if budget_s <= 0:
            raise SinkUnavailable("lease too close to expiry to publish", sink=self.sink.name)
        try:
            await asyncio.wait_for(self.sink.publish(page), timeout=budget_s)
        except TimeoutError as exc:
            raise SinkUnavailable(
                f"no acknowledgement within {budget_s:.1f} s", sink=self.sink.name
            ) from exc

    async def _advance(self, old: int, new: int) -> None:
        s = audit_state.c
        async with self._db.transaction() as uow:
            now = uow.clock.now_us()
            moved = await uow.conn.execute(
                audit_state.update()
                .where(s.name == self.state, s.owner == self.owner, s.position == old)
                .values(
                    position=new,
                    lease_expires_us=now + int(self._lease_s * 1_000_000),
                    updated_us=now,
                )
            )
        if moved.rowcount != 1:
            self.is_leader = False
            self._lease_deadline = 0.0
            raise RelayLeaseLost(f"{self.state}: lease lost before advancing to {new}")
        self.position = new

    def _check_lag(self) -> None:
        lag = self.lag
        if lag <= self._lag_threshold:
            if self._alerted_at is not None:
                log.info("audit.relay_caught_up", sink=self.sink.name, lag=lag)
            self._alerted_at = None
            return
        now = self._monotonic()
        if self._alerted_at is None or now - self._alerted_at >= self._lag_repeat_s:
            self._alerted_at = now
            self._on_lag(self.sink.name, lag)


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel a read-ahead nobody will use; its outcome, even an error, is of no interest."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _log_size(uow: UnitOfWork) -> int:
    last = (await uow.conn.execute(sa.select(sa.func.max(audit_log.c.seq)))).scalar_one()
    return 0 if last is None else int(last) + 1


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def tree_head_covering(db: Database, size: int) -> TreeHead | None:
    """The earliest signed tree head with at least ``size`` leaves (the archive's seal)."""
    h = audit_tree_heads.c
    async with db.transaction(write=False) as uow:
        row = (
            await uow.conn.execute(
                sa.select(h.size, h.root_hash, h.timestamp, h.key_id, h.signature)
                .where(h.size >= size)
                .order_by(h.size)
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    return TreeHead(
        size=int(row.size),
        root_hash=row.root_hash,
        timestamp=row.timestamp,
        key_id=row.key_id,
        signature=row.signature,
    )


def build_relays(
    db: Database,
    *,
    node: str,
    nats_url: str | None = None,
    kafka_bootstrap: str | None = None,
    archive_dir: Path | None = None,
    lag_alert_threshold: int = 10_000,
    on_lag: LagHook | None = None,
    jetstream_stream: str = "HAMMERLOCK_AUDIT",
    jetstream_duplicate_window_s: float = 2 * 3600,
    kafka_topic: str = "hammerlock.audit",
    archive_segment_events: int = 10_000,
    archive_segment_age_s: float = 60.0,
    archive_s3_bucket: str | None = None,
    archive_s3_prefix: str = "",
    archive_s3_endpoint_url: str | None = None,
    archive_s3_region: str | None = None,
    archive_s3_object_lock_days: int | None = None,
    page_size: int = 1_000,
    **relay_options: Any,
) -> list[Relay]:
    """One relay per configured sink (none configured: an empty list).

    The composition root calls this with its settings and runs each relay's ``run_forever``
    as a task; on shutdown it cancels the task and awaits :meth:`Relay.close`. Sink modules are
    imported only when configured, so a deployment without Kafka never loads librdkafka (nor
    boto3 without ``archive_s3_bucket``). With a bucket, sealed segments go there and only the
    open one spools under ``archive_dir/.spool``.
    """
    sinks: list[AuditSink] = []
    if nats_url:
        from hammerlock.audit.sinks.jetstream import JetStreamSink  # noqa: PLC0415 - optional

        sinks.append(
            JetStreamSink(
                nats_url, stream=jetstream_stream, duplicate_window_s=jetstream_duplicate_window_s
            )
        )
    if kafka_bootstrap:
        from hammerlock.audit.sinks.kafka import KafkaSink  # noqa: PLC0415 - optional

        sinks.append(KafkaSink(kafka_bootstrap, topic=kafka_topic))
    if archive_dir is not None:
        from hammerlock.audit.sinks.archive import (  # noqa: PLC0415 - optional
            ArchiveSink,
            ArchiveStore,
            LocalArchiveStore,
        )

        async def heads(size: int) -> TreeHead | None:
            return await tree_head_covering(db, size)

        store: ArchiveStore = LocalArchiveStore(archive_dir)
        if archive_s3_bucket:
            from hammerlock.audit.sinks.archive_s3 import (  # noqa: PLC0415 - optional
                S3ArchiveStore,
            )

            store = S3ArchiveStore(
                archive_s3_bucket,
                prefix=archive_s3_prefix,
                endpoint_url=archive_s3_endpoint_url,
                region=archive_s3_region,
                object_lock_days=archive_s3_object_lock_days,
            )
        sinks.append(
            ArchiveSink(
                store,
                archive_dir / ".spool",
                heads,
                segment_events=archive_segment_events,
                segment_age_s=archive_segment_age_s,
            )
        )
    return [
        Relay(
            db,
            sink,
            node=node,
            page_size=page_size,
            lag_alert_threshold=lag_alert_threshold,
            on_lag=on_lag,
            **relay_options,
        )
        for sink in sinks
    ]
