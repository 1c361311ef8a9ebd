"""The audit relay: audit_log → sinks, in seq order, at least once, deduplicated by event_id.

One contract suite runs over every sink (an in-memory double, the archive, NATS JetStream on the
machine's server, Kafka on librdkafka's mock cluster); relay mechanics (position, lease, lag,
resend after failure) are tested with the in-memory sink on both database backends; the outage
test kills and restarts a private nats-server while business writes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import rfc8785
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from hammerlock.audit import service as audit
from hammerlock.audit.merkle import leaf_hash
from hammerlock.audit.model import Context
from hammerlock.audit.relay import Relay, RelayLeaseLost, build_relays, tree_head_covering
from hammerlock.audit.sinks import AuditSink, RelayedEvent, SinkRejected, SinkUnavailable
from hammerlock.audit.sinks.archive import (
    MANIFEST_FORMAT,
    ArchiveSink,
    LocalArchiveStore,
    segment_name,
)
from hammerlock.audit.sinks.jetstream import JetStreamSink
from hammerlock.audit.sinks.kafka import KafkaSink
from hammerlock.audit.sinks.memory import MemorySink
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from tests.conftest import require_service
from tests.servers import free_port

SHARED_NATS = "nats://127.0.0.1:4222"
WAIT_S = 20.0


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


async def emit(container: Container, n: int, *, per_tx: int = 50, sequence: bool = True) -> None:
    """Record ``n`` events through the audit service (as business code does), then sequence."""
    ctx = Context.system("tests")
    for start in range(0, n, per_tx):
        async with container.db.transaction() as uow:
            for i in range(start, min(n, start + per_tx)):
                await audit.record(
                    uow,
                    ctx.event(
                        "test.relay.event",
                        resource_type="thing",
                        resource_id=f"r{i % 7}",
                        ts_us=uow.clock.now_us(),
                        details={"i": i},
                    ),
                )
    while sequence and await container.sequencer.run_once():
        pass


async def drain(relay: Relay, *, max_pages: int = 1_000) -> int:
    shipped = 0
    for _ in range(max_pages):
        n = await relay.run_once()
        if n == 0:
            return shipped
        shipped += n
    raise AssertionError("relay did not catch up")


def check_payload(payload: bytes) -> dict[str, Any]:
    """The payload is the event as served; its leaf_hash matches its canonical bytes."""
    event = orjson.loads(payload)
    claimed = event.pop("leaf_hash")
    assert leaf_hash(rfc8785.dumps(event)).hex() == claimed
    return dict(event)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@dataclass
class Record:
    seq: int
    event_id: str  # from the sink's own dedup key (Nats-Msg-Id, Kafka header, the line)
    event: dict[str, Any]


@dataclass
class Harness:
    kind: str
    make: Callable[[], AuditSink]  # the same destination, as a fresh process would open it
    read: Callable[[], Awaitable[list[Record]]]  # every stored record, in stored order
    dedups: bool  # does the destination itself store each event_id once?


def dedup(records: list[Record]) -> list[Record]:
    seen: set[str] = set()
    out = []
    for r in records:
        if r.event_id not in seen:
            seen.add(r.event_id)
            out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# One harness per sink
# --------------------------------------------------------------------------------------------


def _memory_harness() -> Harness:
    sink = MemorySink()

    async def read() -> list[Record]:
        return [Record(e.seq, e.event_id, check_payload(e.payload())) for e in sink.stored]

    return Harness("memory", lambda: sink, read, dedups=True)


def _archive_harness(container: Container, root: Path) -> Harness:
    def make() -> ArchiveSink:
        return ArchiveSink(
            LocalArchiveStore(root),
            root / ".spool",
            functools.partial(tree_head_covering, container.db),
            segment_events=64,
        )

    async def read() -> list[Record]:
        lines: list[bytes] = []
        for manifest in sorted(root.glob("*.manifest.json")):
            body = orjson.loads(manifest.read_bytes())
            packed = (root / body["file"]).read_bytes()
            assert hashlib.sha256(packed).hexdigest() == body["sha256"]
            lines.extend(gzip.decompress(packed).splitlines())
        spool = root / ".spool" / "open.jsonl"
        if spool.exists():
            lines.extend(spool.read_bytes().splitlines())
        events = [check_payload(line) for line in lines]
        return [Record(e["seq"], e["event_id"], e) for e in events]

    return Harness("archive", make, read, dedups=True)


async def read_stream(url: str, stream: str) -> list[Record]:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(stream)
        records = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            assert msg.data is not None
            assert msg.headers is not None
            event = check_payload(msg.data)
            assert msg.headers["Hammerlock-Seq"] == str(event["seq"])
            records.append(Record(event["seq"], msg.headers["Nats-Msg-Id"], event))
        return records
    finally:
        await nc.close()


async def delete_stream(url: str, stream: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream(timeout=5).delete_stream(stream)
    finally:
        await nc.close()


def _jetstream_harness(stream: str, prefix: str) -> Harness:
    def make() -> JetStreamSink:
        return JetStreamSink(
            SHARED_NATS, stream=stream, subject_prefix=prefix, storage="memory", ack_timeout_s=5
        )

    return Harness("jetstream", make, lambda: read_stream(SHARED_NATS, stream), dedups=True)


@pytest.fixture
def kafka_bootstrap() -> Iterator[str]:
    """librdkafka's mock cluster; it lives as long as the client that created it."""
    admin = AdminClient({"test.mock.num.brokers": 1, "log_level": 3})
    metadata = admin.list_topics(timeout=5)
    yield ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values())
    del admin


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 10) -> list[Record]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{secrets.token_hex(4)}",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
        consumer.assign([TopicPartition(topic, 0, low)])
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < high - low and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                assert msg.error() is None, msg.error()
                headers = dict(msg.headers() or [])
                value = msg.value()
                assert isinstance(value, bytes)
                event = check_payload(value)
                assert headers["seq"] == str(event["seq"]).encode()
                assert msg.key() == (event["resource"]["id"] or event["event_id"]).encode()
                records.append(Record(event["seq"], headers["event_id"].decode(), event))
        assert len(records) == high - low
        return records
    finally:
        consumer.close()


def _kafka_harness(bootstrap: str, topic: str) -> Harness:
    def make() -> KafkaSink:
        return KafkaSink(bootstrap, topic=topic, delivery_timeout_s=10)

    async def read() -> list[Record]:
        return await asyncio.to_thread(read_topic, bootstrap, topic)

    return Harness("kafka", make, read, dedups=False)


@pytest.fixture(params=["memory", "archive", "jetstream", "kafka"])
async def harness(
    request: pytest.FixtureRequest, container: Container, tmp_path: Path
) -> AsyncIterator[Harness]:
    kind = request.param
    if kind == "memory":
        yield _memory_harness()
    elif kind == "archive":
        yield _archive_harness(container, tmp_path / "archive")
    elif kind == "jetstream":
        require_service("NATS", "127.0.0.1", 4222)
        token = secrets.token_hex(4)
        stream = f"HL_TEST_{token}"
        try:
            yield _jetstream_harness(stream, f"hltest.{token}.audit")
        finally:
            await delete_stream(SHARED_NATS, stream)
    else:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        yield _kafka_harness(bootstrap, f"hammerlock.audit.{secrets.token_hex(4)}")


def relay_for(container: Container, sink: AuditSink, **options: Any) -> Relay:
    options.setdefault("page_size", 100)
    return Relay(container.db, sink, node="test", **options)


# --------------------------------------------------------------------------------------------
# The contract: every sink
# --------------------------------------------------------------------------------------------

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@sqlite_only
async def test_ships_every_event_in_seq_order(container: Container, harness: Harness) -> None:
    await emit(container, 250)
    sink = harness.make()
    relay = relay_for(container, sink)
    try:
        assert await drain(relay) == 250
        assert relay.position == 250
        assert relay.lag == 0
    finally:
        await relay.close()
    records = await harness.read()
    assert [r.seq for r in records] == list(range(250))
    assert len({r.event_id for r in records}) == 250
    assert all(r.event["event_id"] == r.event_id for r in records)
    assert all(r.event["action"] == "test.relay.event" for r in records)


@sqlite_only
async def test_a_resent_page_is_absorbed_by_event_id(
    container: Container, harness: Harness
) -> None:
    await emit(container, 40)
    relay = relay_for(container, harness.make(), page_size=25)
    try:
        await drain(relay)
        # A relay that died after publishing but before advancing resends the same pages;
        # this one is told to, directly.
        page = await relay._read_page(0)
        await relay.sink.publish(page)
        await relay.sink.publish(page[10:])
    finally:
        await relay.close()
    records = await harness.read()
    if harness.dedups:
        assert [r.seq for r in records] == list(range(40))
    else:  # Kafka keeps repeats: consumers deduplicate by the event_id header
        assert len(records) == 40 + 25 + 15
        assert [r.seq for r in dedup(records)] == list(range(40))


@sqlite_only
async def test_position_survives_a_restart(container: Container, harness: Harness) -> None:
    await emit(container, 120)
    first = relay_for(container, harness.make(), page_size=50)
    assert await first.run_once() == 50
    assert await first.run_once() == 50
    await first.close()  # the process stops; its position is in audit_state

    await emit(container, 30)
    second = relay_for(container, harness.make(), page_size=50)
    try:
        assert await drain(second) == 50  # 20 left over + 30 new, nothing twice
        assert second.position == 150
    finally:
        await second.close()
    records = await harness.read()
    assert [r.seq for r in records] == list(range(150))


@sqlite_only
async def test_a_second_relay_on_the_same_sink_waits(
    container: Container, harness: Harness
) -> None:
    await emit(container, 30)
    a = relay_for(container, harness.make(), page_size=10)
    b = relay_for(container, harness.make(), page_size=10)
    try:
        assert await a.run_once() == 10
        assert await b.run_once() == 0  # another process, same sink name: standby
        assert (a.is_leader, b.is_leader) == (True, False)
        await a.release()  # a clean shutdown hands over at once
        assert await drain(b) == 20
        assert await a.run_once() == 0
    finally:
        await a.close()
        await b.close()
    records = await harness.read()
    assert [r.seq for r in records] == list(range(30))  # nothing twice: not even a repeat


@sqlite_only
async def test_lag_is_reported(container: Container, harness: Harness) -> None:
    alerts: list[tuple[str, int]] = []
    relay = relay_for(
        container,
        harness.make(),
        page_size=20,
        lag_alert_threshold=30,
        on_lag=lambda name, lag: alerts.append((name, lag)),
    )
    try:
        await emit(container, 50)
        assert await relay.measure_lag() == 50
        assert await relay.run_once() == 20
        assert (relay.lag, await relay.measure_lag()) == (30, 30)
        assert alerts == [(relay.sink.name, 50)]  # measured before the page went out
        await drain(relay)
        assert (relay.lag, await relay.measure_lag()) == (0, 0)
        assert len(alerts) == 1
    finally:
        await relay.close()


# --------------------------------------------------------------------------------------------
# Relay mechanics (the in-memory sink, both database backends)
# --------------------------------------------------------------------------------------------


async def test_resends_from_the_first_unacknowledged_event(container: Container) -> None:
    await emit(container, 100)
    sink = MemorySink()
    relay = relay_for(container, sink, page_size=40)
    sink.fail_next(acked=15)
    with pytest.raises(SinkUnavailable):
        await relay.run_once()
    assert relay.position == 15  # the acknowledged prefix is kept
    assert relay.failures == 1
    sink.fail_next(2)  # two whole pages fail: nothing moves
    for _ in range(2):
        with pytest.raises(SinkUnavailable):
            await relay.run_once()
    assert relay.position == 15
    assert await drain(relay) == 85
    assert relay.failures == 0
    assert [e.seq for e in sink.stored] == list(range(100))
    # Each attempt started at the first unacknowledged event: nothing was delivered twice.
    assert [e.seq for e in sink.deliveries] == list(range(100))
    await relay.close()


async def test_a_taken_over_relay_stops_before_publishing_more(
    container: Container, clock: FixedClock
) -> None:
    await emit(container, 60)
    sink_a, sink_b = MemorySink("shared"), MemorySink("shared")
    a = relay_for(container, sink_a, page_size=10, lease_s=20, publish_timeout_s=5)
    b = relay_for(container, sink_b, page_size=10, lease_s=20, publish_timeout_s=5)
    assert await a.run_once() == 10

    async def stall_then_lose_lease(_page: Any) -> None:
        # A stalls mid-page past its lease (GC pause, network); B takes over meanwhile.
        sink_a.before_publish = None
        clock.advance(21)
        assert await b.run_once() == 10

    sink_a.before_publish = stall_then_lose_lease
    with pytest.raises(RelayLeaseLost):
        await a.run_once()  # its page went out (B's too: dedup absorbs) but it cannot advance
    assert not a.is_leader
    calls = sink_a.publish_calls
    assert await a.run_once() == 0  # standby now: publishes nothing more
    assert sink_a.publish_calls == calls
    assert await drain(b) == 40
    assert b.position == 60
    assert [e.seq for e in dedup_events(sink_a.stored + sink_b.stored)] == list(range(60))
    await b.close()


def dedup_events(events: list[RelayedEvent]) -> list[RelayedEvent]:
    seen: dict[str, RelayedEvent] = {}
    for e in events:
        seen.setdefault(e.event_id, e)
    return sorted(seen.values(), key=lambda e: e.seq)


async def test_lag_is_reported_and_alerts_past_the_threshold(container: Container) -> None:
    alerts: list[tuple[str, int]] = []
    sink = MemorySink("lagging")
    relay = relay_for(
        container,
        sink,
        page_size=20,
        lag_alert_threshold=30,
        on_lag=lambda name, lag: alerts.append((name, lag)),
    )
    await emit(container, 25)
    assert await relay.measure_lag() == 25
    sink.down = True
    with pytest.raises(SinkUnavailable):
        await relay.run_once()
    assert relay.lag == 25
    assert alerts == []  # under the threshold
    await emit(container, 20)
    for _ in range(3):
        with pytest.raises(SinkUnavailable):
            await relay.run_once()
    assert relay.lag == 45
    assert alerts == [("lagging", 45)]  # once, not on every retry
    assert await relay.measure_lag() == 45
    sink.down = False
    await drain(relay)
    assert relay.lag == 0
    assert await relay.measure_lag() == 0
    await relay.close()


async def test_run_forever_backs_off_and_catches_up(container: Container) -> None:
    await emit(container, 50)
    sink = MemorySink()
    sink.down = True
    relay = relay_for(
        container,
        sink,
        page_size=20,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        poll_interval_s=0.01,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run_forever(stop))
    try:
        await wait_until(lambda: sink.publish_calls >= 4)
        assert relay.position == 0
        sink.down = False
        await wait_until(lambda: relay.position == 50)
        await emit(container, 10)
        await wait_until(lambda: relay.position == 60)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert [e.seq for e in sink.stored] == list(range(60))
    await relay.close()


# --------------------------------------------------------------------------------------------
# Sink specifics
# --------------------------------------------------------------------------------------------


@sqlite_only
async def test_archive_segments_are_sealed_with_a_covering_tree_head(
    container: Container, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    now = [0.0]
    sink = ArchiveSink(
        LocalArchiveStore(root),
        root / ".spool",
        functools.partial(tree_head_covering, container.db),
        segment_events=100,
        segment_age_s=60,
        monotonic=lambda: now[0],
    )
    relay = relay_for(container, sink, page_size=70)
    await emit(container, 230)
    await drain(relay)
    names = sorted(p.name for p in root.iterdir() if p.is_file())
    assert names == [
        "events-000000000000-000000000099.jsonl.gz",
        "events-000000000000-000000000099.manifest.json",
        "events-000000000100-000000000199.jsonl.gz",
        "events-000000000100-000000000199.manifest.json",
    ]
    manifest = orjson.loads((root / names[1]).read_bytes())
    assert manifest["format"] == MANIFEST_FORMAT
    assert (manifest["first_seq"], manifest["last_seq"], manifest["count"]) == (0, 99, 100)
    packed = (root / manifest["file"]).read_bytes()
    assert hashlib.sha256(packed).hexdigest() == manifest["sha256"]
    assert manifest["tree_head"]["size"] >= 100
    lines = gzip.decompress(packed).splitlines()
    assert [check_payload(line)["seq"] for line in lines] == list(range(100))

    # The last 30 are spooled; idle heartbeats seal them once the segment is 60 s old.
    assert await relay.run_once() == 0
    assert not (root / segment_name(200, 229)).exists()
    now[0] = 61.0
    assert await relay.run_once() == 0
    assert (root / segment_name(200, 229)).exists()
    await relay.close()


@sqlite_only
async def test_archive_recovers_its_spool_and_refuses_gaps(
    container: Container, tmp_path: Path
) -> None:
    root = tmp_path / "archive"

    def make() -> ArchiveSink:
        return ArchiveSink(
            LocalArchiveStore(root),
            root / ".spool",
            functools.partial(tree_head_covering, container.db),
            segment_events=1_000,
        )

    await emit(container, 20)
    relay = relay_for(container, make())
    page = await relay._read_page(0)
    sink = make()
    await sink.publish(page[:10])
    # A crash mid-write leaves a torn line that was never acknowledged.
    with (root / ".spool" / "open.jsonl").open("ab") as fh:
        fh.write(page[10].payload()[:25])
    restarted = make()
    await restarted.publish(page[5:15])  # repeats absorbed, the torn line dropped
    assert restarted.last_seq == 14
    with pytest.raises(SinkRejected) as refused:
        await restarted.publish(page[16:])  # seq 15 missing
    assert refused.value.acked == 0
    assert await restarted.seal_now()
    lines = gzip.decompress((root / segment_name(0, 14)).read_bytes()).splitlines()
    assert [check_payload(line)["seq"] for line in lines] == list(range(15))


@sqlite_only
async def test_jetstream_stream_is_append_only_with_a_long_dedup_window(
    container: Container,
) -> None:
    require_service("NATS", "127.0.0.1", 4222)
    token = secrets.token_hex(4)
    stream = f"HL_TEST_{token}"
    sink = JetStreamSink(
        SHARED_NATS, stream=stream, subject_prefix=f"hltest.{token}.audit", storage="memory"
    )
    await emit(container, 5)
    relay = relay_for(container, sink)
    try:
        await drain(relay)
        nc = await nats.connect(SHARED_NATS, connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream(timeout=5)
            info = await js.stream_info(stream)
            assert info.config.deny_delete
            assert info.config.deny_purge
            assert info.config.duplicate_window >= 2 * 3600
            assert info.config.subjects == [f"hltest.{token}.audit.>"]
            assert info.state.messages == 5
            msg = await js.get_msg(stream, 1)
            assert msg.subject == f"hltest.{token}.audit.test.relay.event"
            with pytest.raises(nats.js.errors.APIError):
                await js.delete_msg(stream, 1)
            with pytest.raises(nats.js.errors.APIError):
                await js.purge_stream(stream)
        finally:
            await nc.close()
        # A second sink on an existing stream leaves it as it is (idempotent setup).
        again = JetStreamSink(SHARED_NATS, stream=stream, subject_prefix=f"hltest.{token}.audit")
        await again.publish((await relay._read_page(0))[:2])
        await again.close()
        assert len(await read_stream(SHARED_NATS, stream)) == 5
    finally:
        await relay.close()
        await delete_stream(SHARED_NATS, stream)


@sqlite_only
async def test_jetstream_sink_reports_an_unreachable_server(container: Container) -> None:
    sink = JetStreamSink(f"nats://127.0.0.1:{free_port()}", connect_timeout_s=0.5)
    await emit(container, 3)
    relay = relay_for(container, sink)
    with pytest.raises(SinkUnavailable):
        await relay.run_once()
    assert relay.position == 0
    await relay.close()


@sqlite_only
async def test_kafka_sink_reports_an_unreachable_broker(container: Container) -> None:
    sink = KafkaSink(f"127.0.0.1:{free_port()}", delivery_timeout_s=1.0, config={"log_level": 0})
    await emit(container, 3)
    relay = relay_for(container, sink, publish_timeout_s=3.0)
    with pytest.raises(SinkUnavailable, match="seq 0"):
        await relay.run_once()
    assert relay.position == 0
    await relay.close()


@sqlite_only
def test_build_relays_makes_one_relay_per_configured_sink(container: Container) -> None:
    assert build_relays(container.db, node="n") == []
    relays = build_relays(
        container.db,
        node="n",
        nats_url=SHARED_NATS,
        kafka_bootstrap="127.0.0.1:1",
        archive_dir=Path("/nonexistent/archive"),
    )
    assert [r.state for r in relays] == ["relay:jetstream", "relay:kafka", "relay:archive"]


# --------------------------------------------------------------------------------------------
# A NATS outage: business writes go on, the relay catches up, every event once and in order
# --------------------------------------------------------------------------------------------


def _nats_server_binary() -> str:
    found = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(found).exists():
        pytest.skip("nats-server is not installed")
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class PrivateNats:
    binary: str
    port: int
    store: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-sd",
                    str(self.store),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nats-server did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    server = PrivateNats(
        _nats_server_binary(), free_port(), tmp_path / "nats-store", tmp_path / "nats.log"
    )
    try:
        server.start()
        yield server
    finally:
        server.kill()


class KillMidPage:
    """Wraps a sink; kills the NATS server while the page from ``at_seq`` is in flight."""

    def __init__(self, inner: JetStreamSink, server: PrivateNats, at_seq: int) -> None:
        self.inner = inner
        self.server = server
        self.at_seq = at_seq
        self.killed_at: int | None = None

    @property
    def name(self) -> str:
        return self.inner.name

    async def publish(self, events: Sequence[RelayedEvent]) -> None:
        if self.killed_at is not None or not events or events[-1].seq < self.at_seq:
            await self.inner.publish(events)
            return
        self.killed_at = events[0].seq
        in_flight = asyncio.ensure_future(self.inner.publish(events))
        await asyncio.sleep(0.001)  # some of the page is out, some acknowledged
        self.server.kill()
        await in_flight

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.nats
@sqlite_only
async def test_nats_outage_blocks_no_write_and_loses_no_event(
    container: Container, private_nats: PrivateNats
) -> None:
    sink = KillMidPage(
        JetStreamSink(
            private_nats.url, ack_timeout_s=1.0, connect_timeout_s=1.0, reconnect_wait_s=0.1
        ),
        private_nats,
        at_seq=300,
    )
    alerts: list[int] = []
    relay = relay_for(
        container,
        sink,
        page_size=100,
        publish_timeout_s=2.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
        poll_interval_s=0.02,
        lag_alert_threshold=150,
        on_lag=lambda _sink, lag: alerts.append(lag),
    )
    await emit(container, 1_000)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run_forever(stop))
    try:
        await wait_until(lambda: sink.killed_at is not None)
        slowest_s = 0.0
        for _ in range(20):  # business writes go on: 10 events per transaction
            started = time.monotonic()
            await emit(container, 10, per_tx=10)
            slowest_s = max(slowest_s, time.monotonic() - started)
            await asyncio.sleep(0.02)
        assert slowest_s < 1.0, f"a business write took {slowest_s:.2f} s during the outage"
        await wait_until(lambda: relay.failures >= 2)
        assert relay.position is not None
        assert relay.position <= 400
        assert alerts, "no lag alert during the outage"

        private_nats.start()  # same port, same store: the stream and its dedup state are back
        await wait_until(lambda: relay.position == 1_200)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        await relay.close()

    records = await read_stream(private_nats.url, "HAMMERLOCK_AUDIT")
    assert [r.seq for r in records] == list(range(1_200))  # once each, in order
    assert len({r.event_id for r in records}) == 1_200


@pytest.mark.nats
@sqlite_only
async def test_jetstream_sink_recreates_a_lost_stream(
    container: Container, private_nats: PrivateNats, tmp_path: Path
) -> None:
    sink = JetStreamSink(private_nats.url, ack_timeout_s=1.0, connect_timeout_s=1.0)
    relay = relay_for(container, sink, page_size=10, publish_timeout_s=2.0)
    try:
        await emit(container, 10)
        assert await drain(relay) == 10
        private_nats.kill()
        private_nats.store = tmp_path / "empty-store"  # a server that lost its data
        private_nats.start()
        await emit(container, 10)
        shipped = 0
        deadline = time.monotonic() + WAIT_S
        while shipped < 10 and time.monotonic() < deadline:
            try:
                shipped += await relay.run_once()
            except SinkUnavailable:  # reconnecting, then "no responders": the stream is gone
                await asyncio.sleep(0.1)
        assert shipped == 10
    finally:
        await relay.close()
    records = await read_stream(private_nats.url, "HAMMERLOCK_AUDIT")
    assert [r.seq for r in records] == list(range(10, 20))
