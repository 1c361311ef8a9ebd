"""Outbound webhooks end to end: the outbox, a real HTTP receiver, retries, concurrent senders.

The receiver is a few lines of asyncio on a free local port: it answers with whatever status the
test sets, records what it got, and checks every signature with its own HMAC code (not
hammerlock's), so the test proves the wire format, not an implementation against itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from hammerlock.audit.storage import audit_outbox
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.engine import Database, create_database
from hammerlock.settings import Settings
from hammerlock.webhooks import service
from hammerlock.webhooks.deliverer import DELIVERY_FAILED, WebhookDeliverer
from hammerlock.webhooks.model import Backoff
from hammerlock.webhooks.storage import webhook_attempts, webhook_events
from tests.servers import free_port

SECRET = b"whsec_test_0123456789abcdef"


@dataclass
class Received:
    event_id: str
    body: bytes
    signature: str
    signature_ok: bool


@dataclass
class Receiver:
    """A tiny HTTP/1.1 endpoint: one request per connection, answers ``status``."""

    port: int
    clock: FixedClock
    status: int = 200
    delay_s: float = 0.0
    gate: asyncio.Event | None = None  # when set, requests wait for it
    waiting: int = 0  # requests waiting at the gate
    got: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def counts(self) -> Counter[str]:
        return Counter(r.event_id for r in self.got)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.decode().split("\r\n")[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if self.gate is not None:
                self.waiting += 1
                await self.gate.wait()
            await asyncio.sleep(self.delay_s)
            signature = headers.get("hammerlock-signature", "")
            self.got.append(
                Received(
                    headers.get("hammerlock-event-id", ""),
                    body,
                    signature,
                    _independent_verify(signature, body, self.clock.now_us() // 1_000_000),
                )
            )
            reply = b"x" * 100_000  # more than the deliverer reads
            writer.write(
                f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(reply)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + reply
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _independent_verify(header: str, body: bytes, now_s: int) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(","))
    t = int(parts["t"])
    mac = hmac.new(SECRET, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return abs(now_s - t) <= 300 and hmac.compare_digest(mac, parts["v1"])


@pytest.fixture
async def db(database_url: str, tmp_path: Path, clock: FixedClock) -> AsyncIterator[Database]:
    database = create_database(Settings(data_dir=tmp_path, database_url=database_url), clock)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def receiver(clock: FixedClock) -> AsyncIterator[Receiver]:
    r = Receiver(port=free_port(), clock=clock)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def deliverer(db: Database, url: str, **kw: object) -> WebhookDeliverer:
    options: dict[str, object] = {
        "node": "test",
        "timeout_s": 5.0,
        "batch_size": 10,
        "rng": random.Random(1),
        **kw,
    }
    return WebhookDeliverer(db, url=url, secret=SECRET, **options)  # type: ignore[arg-type]


async def enqueue(db: Database, n: int, event_type: str = "payment_intent.succeeded") -> list[str]:
    ids = []
    async with db.transaction() as uow:
        for i in range(n):
            event = await service.enqueue(
                uow, event_type, {"id": f"pi_{i}", "amount": 5_000 + i}, ts_us=uow.clock.now_us()
            )
            ids.append(event.id)
    return ids


async def statuses(db: Database) -> dict[str, tuple[str, int]]:
    e = webhook_events.c
    async with db.transaction(write=False) as uow:
        rows = (await uow.conn.execute(sa.select(e.id, e.status, e.attempts))).all()
    return {r.id: (r.status, r.attempts) for r in rows}


async def attempts(db: Database) -> list[tuple[str, int, int | None, str | None]]:
    a = webhook_attempts.c
    async with db.transaction(write=False) as uow:
        rows = (
            await uow.conn.execute(
                sa.select(a.event_id, a.attempt, a.status_code, a.error).order_by(a.seq)
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------


async def test_enqueue_commits_with_its_transaction_and_vanishes_with_a_rollback(
    db: Database,
) -> None:
    kept = await enqueue(db, 1)

    async def failing_change() -> None:
        async with db.transaction() as uow:
            await service.enqueue(uow, "refund.created", {"id": "re_1"}, ts_us=1)
            raise RuntimeError("payment failed after the event was written")

    with pytest.raises(RuntimeError, match="payment failed"):
        await failing_change()
    assert list(await statuses(db)) == kept
    async with db.transaction(write=False) as uow:
        detail = await service.get_event(uow, kept[0])
    assert detail.payload["data"] == {"id": "pi_0", "amount": 5_000}
    assert detail.event.status == "pending"
    with pytest.raises(ValueError, match="dotted lowercase"):
        async with db.transaction() as uow:
            await service.enqueue(uow, "Payment Succeeded", {}, ts_us=1)


async def test_events_are_delivered_signed_to_a_real_receiver(
    db: Database, receiver: Receiver
) -> None:
    ids = await enqueue(db, 3)
    d = deliverer(db, receiver.url)
    try:
        assert await d.run_once() == 3
        assert await d.run_once() == 0  # nothing left
    finally:
        await d.close()
    assert sorted(receiver.counts()) == sorted(ids)
    assert all(r.signature_ok for r in receiver.got)
    for r in receiver.got:
        body = orjson.loads(r.body)
        assert body["id"] == r.event_id
        assert body["type"] == "payment_intent.succeeded"
        assert body["created"] == "2026-01-01T00:00:00.000000Z"
    assert await statuses(db) == dict.fromkeys(ids, ("delivered", 1))
    assert sorted(await attempts(db)) == sorted((i, 1, 200, None) for i in ids)


async def test_retries_follow_the_backoff_schedule_then_give_up(
    db: Database, receiver: Receiver, clock: FixedClock
) -> None:
    receiver.status = 503
    backoff = Backoff(initial_s=10, max_s=40, max_age_s=200)
    [event_id] = await enqueue(db, 1)
    created = clock.now_us()
    d = deliverer(db, receiver.url, backoff=backoff, rng=random.Random(42))
    jitter = random.Random(42)
    made = 0
    try:
        while True:
            assert await d.run_once() == 1
            made += 1
            async with db.transaction(write=False) as uow:
                detail = await service.get_event(uow, event_id)
            if detail.event.status == "failed":
                break
            expected = clock.now_us() + backoff.delay_us(made, jitter.random())
            assert detail.event.next_attempt_us == expected
            clock.advance(us=expected - clock.now_us() - 1)
            assert await d.run_once() == 0  # not due yet
            clock.advance(us=1)
    finally:
        await d.close()
    assert d.failed == 1
    assert clock.now_us() - created <= 200_000_000
    assert made == len(receiver.got) >= 5  # 10, 20, 40, 40, … seconds apart
    assert [a[1:] for a in await attempts(db)] == [(n, 503, None) for n in range(1, made + 1)]
    async with db.transaction(write=False) as uow:
        audited = (
            await uow.conn.execute(
                sa.select(audit_outbox.c.event).where(audit_outbox.c.action == DELIVERY_FAILED)
            )
        ).scalar_one()
    failure = orjson.loads(audited)
    assert failure["resource"] == {"type": "webhook_event", "id": event_id}
    assert failure["outcome"]["status"] == "failure"


async def test_events_older_than_the_maximum_age_fail_without_an_attempt(
    db: Database, receiver: Receiver, clock: FixedClock
) -> None:
    [old] = await enqueue(db, 1)
    clock.advance(3 * 86_400 + 1)
    [fresh] = await enqueue(db, 1)
    d = deliverer(db, receiver.url)
    try:
        assert await d.run_once() == 1
    finally:
        await d.close()
    assert await statuses(db) == {old: ("failed", 0), fresh: ("delivered", 1)}
    assert list(receiver.counts()) == [fresh]


async def test_receiver_down_then_up_delivers_each_event_once(
    db: Database, clock: FixedClock
) -> None:
    receiver = Receiver(port=free_port(), clock=clock)  # not listening yet
    ids = await enqueue(db, 12)
    d = deliverer(db, receiver.url, batch_size=5)
    try:
        assert [await d.run_once() for _ in range(4)] == [5, 5, 2, 0]
        await receiver.start()
        assert await d.run_once() == 0  # retries are not due yet
        clock.advance(60)  # past the first backoff (at most 30 s)
        assert [await d.run_once() for _ in range(4)] == [5, 5, 2, 0]
    finally:
        await d.close()
        await receiver.stop()
    assert receiver.counts() == Counter(dict.fromkeys(ids, 1))
    assert await statuses(db) == dict.fromkeys(ids, ("delivered", 2))
    rows = await attempts(db)
    assert len(rows) == 24
    for event_id, attempt, status_code, error in rows:
        assert event_id in ids
        if attempt == 1:
            assert status_code is None
            assert error is not None
            assert error.startswith("ConnectError")
        else:
            assert (attempt, status_code, error) == (2, 200, None)


async def test_two_deliverers_share_the_work_and_never_send_an_event_twice(
    database_url: str, tmp_path: Path, clock: FixedClock, receiver: Receiver
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    one, two = create_database(settings, clock), create_database(settings, clock)
    receiver.delay_s = 0.01
    ids = await enqueue(one, 40)
    a, b = deliverer(one, receiver.url, batch_size=4), deliverer(two, receiver.url, batch_size=4)

    async def drain(d: WebhookDeliverer) -> int:
        total = 0
        while made := await d.run_once():
            total += made
        return total

    try:
        made_a, made_b = await asyncio.gather(drain(a), drain(b))
    finally:
        await a.close()
        await b.close()
        await one.dispose()
        await two.dispose()
    assert made_a + made_b == 40
    assert receiver.counts() == Counter(dict.fromkeys(ids, 1))


async def test_a_claimed_event_is_not_sent_again_until_its_lease_lapses(
    db: Database, receiver: Receiver, clock: FixedClock
) -> None:
    receiver.gate = asyncio.Event()
    [event_id] = await enqueue(db, 1)
    a = deliverer(db, receiver.url, claim_s=20.0)
    b = deliverer(db, receiver.url, claim_s=20.0)
    try:
        first = asyncio.create_task(a.run_once())
        while not receiver.waiting:
            await asyncio.sleep(0.01)
        assert await b.run_once() == 0  # A holds the claim while its request is in flight
        clock.advance(21)  # A stalls past its lease: B may send again (at least once)
        second = asyncio.create_task(b.run_once())
        await asyncio.sleep(0.2)
        receiver.gate.set()
        assert await asyncio.gather(first, second) == [1, 1]
    finally:
        await a.close()
        await b.close()
    assert receiver.counts() == Counter({event_id: 2})  # the receiver dedupes by this id
    assert (await statuses(db))[event_id] == ("delivered", 2)


async def test_the_container_runs_the_deliverer_in_the_background(
    database_url: str, tmp_path: Path, clock: FixedClock, receiver: Receiver
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        api_key_pepper="test-pepper-not-secret",  # type: ignore[arg-type]
        webhook_url=receiver.url,
        webhook_secret=SECRET.decode(),  # type: ignore[arg-type]
    )
    container = Container(settings, clock=clock, background=True)
    await container.start()
    try:
        assert container.webhook_deliverer is not None
        [event_id] = await enqueue(container.db, 1, "review.opened")
        for _ in range(200):
            if receiver.got:
                break
            await asyncio.sleep(0.05)
    finally:
        await container.stop()
    assert list(receiver.counts()) == [event_id]
    assert receiver.got[0].signature_ok


def test_no_url_means_no_deliverer(tmp_path: Path) -> None:
    container = Container(Settings(data_dir=tmp_path), clock=FixedClock(), background=False)
    assert container.webhook_deliverer is None
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        Settings(data_dir=tmp_path, webhook_url="http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="16 characters"):
        Settings(data_dir=tmp_path, webhook_url="http://127.0.0.1:9/", webhook_secret="short")  # type: ignore[arg-type]
