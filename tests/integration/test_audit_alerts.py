"""Alerts from the log: events recorded through the audit service, sequenced, relayed to an
:class:`AlertSink` by the real relay, delivered to a channel, a signed webhook and the log.

SQLite is enough here: the relay and the log are tested on both backends in
``test_audit_relay.py``; what is under test is the sink and the wiring.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from hammerlock.audit import service as audit
from hammerlock.audit.alerts import Alert, AlertEngine, AlertRules, Rule, Severity
from hammerlock.audit.model import Actor, Context, Origin, Outcome
from hammerlock.audit.notifiers import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ChannelNotifier,
    Subscription,
    WebhookNotifier,
    verify_webhook,
)
from hammerlock.audit.relay import Relay
from hammerlock.audit.sinks import RelayedEvent, SinkUnavailable
from hammerlock.audit.sinks.alerts import AlertSink
from hammerlock.audit.sinks.memory import MemorySink
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.security import service as keys_service

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

SECRET = b"whsec-integration-0123456789abcd"
ADMIN = Context(
    actor=Actor(principal_id="ops-anna", role="admin", key_id="key_admin"),
    origin=Origin(ip="192.0.2.10", user_agent="console", node="n1"),
    request_id="req_admin",
)
OPERATOR = Context(actor=Actor(principal_id="ops-bob", role="operator", key_id="key_op"))
SELLER = Context(
    actor=Actor(principal_id="seller-1", role="seller", key_id="key_seller"),
    origin=Origin(ip="198.51.100.3"),
)
ATTACKER = Context(actor=Actor(), origin=Origin(ip="203.0.113.9", user_agent="curl"))


async def sequence(container: Container) -> None:
    while await container.sequencer.run_once():
        pass


async def record_scenario(container: Container) -> None:
    """A morning's log: routine ledger work, an admin change, a brute force, a probe, a bad
    verification."""
    async with container.db.transaction() as uow:
        now = uow.clock.now_us()
        for i in range(3):
            await audit.record(
                uow,
                OPERATOR.event(
                    "ledger.transfers.create",
                    resource_type="transfer",
                    resource_id=f"tr_{i}",
                    ts_us=now,
                ),
            )
        await audit.record(
            uow, ADMIN.event("keys.create", resource_type="api_key", resource_id="key_9", ts_us=now)
        )
    for _ in range(5):
        async with container.db.transaction() as uow:
            await keys_service.record_auth_failure(
                uow, ATTACKER, action="auth.failure", code="unauthenticated", route="/v1/ledger"
            )
    async with container.db.transaction() as uow:
        await keys_service.record_auth_failure(
            uow, SELLER, action="auth.denied", code="forbidden", route="/v1/keys/{key_id}"
        )
        await audit.record(
            uow,
            Context.system("cli").event(
                "audit.verify",
                resource_type="audit_log",
                resource_id=None,
                ts_us=uow.clock.now_us(),
                outcome=Outcome.FAILURE,
                outcome_code="audit_log_tampered",
                details={"events": 9, "heads": 1, "problems": 1, "first_problem": "seq 2"},
            ),
        )
    await sequence(container)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


def drain(subscription: Subscription) -> list[Alert]:
    alerts = []
    while (alert := subscription.get_nowait()) is not None:
        alerts.append(alert)
    return alerts


class Receiver:
    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        ok = verify_webhook(
            SECRET,
            request.headers[TIMESTAMP_HEADER],
            body,
            request.headers[SIGNATURE_HEADER],
            self.clock.now_us() / 1_000_000,
        )
        if not ok:
            return httpx.Response(401)
        self.bodies.append(orjson.loads(body))
        return httpx.Response(204)


class Pipeline:
    def __init__(self, container: Container, clock: FixedClock, **rules: Any) -> None:
        self.channel = ChannelNotifier()
        self.subscription = self.channel.subscribe()
        self.receiver = Receiver(clock)
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self.receiver))
        self.webhook = WebhookNotifier(
            "https://alerts.example.test/hammerlock",
            SECRET,
            clock=clock,
            client=self.client,
            rng=random.Random(1),
        )
        self.sink = AlertSink(
            AlertEngine(AlertRules(**rules)), [self.channel, self.webhook], clock=clock
        )
        self.relay = Relay(container.db, self.sink, node="t")

    async def run(self) -> list[Alert]:
        while await self.relay.run_once():
            pass
        assert await self.sink.flush(timeout_s=5)
        return drain(self.subscription)


@pytest.fixture
async def pipeline(container: Container, clock: FixedClock) -> AsyncIterator[Pipeline]:
    p = Pipeline(container, clock)
    yield p
    await p.relay.close()
    await p.client.aclose()


@sqlite_only
async def test_the_relay_drives_the_rules_and_every_notifier_gets_the_alerts(
    container: Container, pipeline: Pipeline
) -> None:
    await record_scenario(container)
    alerts = await pipeline.run()
    assert [a.rule for a in alerts] == [
        Rule.ADMIN_ACTION,
        Rule.SECURITY_CHANGE,
        Rule.AUTH_FAILURE_BURST,
        Rule.ADMIN_ROUTE_DENIED,
        Rule.AUDIT_VERIFY_FAILED,
    ]
    admin, change, burst, denied, verify = alerts
    assert "ops-anna" in admin.summary
    assert change.details["resource_id"] == "key_9"
    assert burst.severity is Severity.CRITICAL
    assert burst.details["origin_ip"] == "203.0.113.9"
    assert len(burst.event_ids) == 5
    assert denied.details["route"] == "/v1/keys/{key_id}"
    assert denied.details["role"] == "seller"
    assert verify.details["first_problem"] == "seq 2"
    # The webhook received the same alerts, each signed and verified by the receiver.
    assert [b["alert_id"] for b in pipeline.receiver.bodies] == [a.alert_id for a in alerts]
    assert pipeline.webhook.delivered == 5
    assert pipeline.relay.position == 11


@sqlite_only
async def test_a_resent_page_raises_no_alert_twice(
    container: Container, pipeline: Pipeline
) -> None:
    await record_scenario(container)
    first = await pipeline.run()
    page = await pipeline.relay._read_page(0)
    await pipeline.sink.publish(page)  # the relay lost its lease mid-page and sent it again
    await pipeline.sink.publish(page[4:])
    assert await pipeline.sink.flush()
    assert drain(pipeline.subscription) == []
    assert pipeline.sink.engine.stats()["duplicates"] == len(page) + len(page) - 4
    assert len(first) == 5


@sqlite_only
async def test_new_events_are_picked_up_where_the_relay_stopped(
    container: Container, pipeline: Pipeline, clock: FixedClock
) -> None:
    await record_scenario(container)
    await pipeline.run()
    clock.advance(30)
    async with container.db.transaction() as uow:
        await audit.record(
            uow,
            ADMIN.event(
                "config.update", resource_type="setting", resource_id="fx", ts_us=clock.now_us()
            ),
        )
    await sequence(container)
    assert [a.rule for a in await pipeline.run()] == [Rule.ADMIN_ACTION, Rule.SECURITY_CHANGE]


@sqlite_only
async def test_a_lagging_sink_alerts_through_the_lag_hook(
    container: Container, pipeline: Pipeline
) -> None:
    await record_scenario(container)
    down = MemorySink("jetstream")
    down.down = True
    relay = Relay(
        container.db,
        down,
        node="t",
        lag_alert_threshold=10,
        on_lag=pipeline.sink.lag_hook(threshold=10),
    )
    with pytest.raises(SinkUnavailable):
        await relay.run_once()
    assert await pipeline.sink.flush()
    [lagging] = drain(pipeline.subscription)
    assert (lagging.rule, lagging.severity) == (Rule.SINK_LAGGING, Severity.WARNING)
    assert lagging.details == {"sink": "jetstream", "lag": 11, "threshold": 10}
    await relay.close()


@sqlite_only
async def test_an_idle_relay_checks_the_dead_mans_switch(
    container: Container, pipeline: Pipeline, clock: FixedClock
) -> None:
    await record_scenario(container)
    await pipeline.run()
    clock.advance(100)
    assert await pipeline.run() == []  # an empty page: checked, within the timeout
    clock.advance(21)
    [missing] = await pipeline.run()
    assert (missing.rule, missing.severity) == (Rule.HEARTBEAT_MISSING, Severity.CRITICAL)
    assert missing.details["silent_s"] == 121
    clock.advance(600)
    assert await pipeline.run() == []  # once per silence
    async with container.db.transaction() as uow:
        await audit.record(
            uow,
            Context.system("audit").event(
                "audit.heartbeat", resource_type="audit", resource_id=None, ts_us=clock.now_us()
            ),
        )
    await sequence(container)
    assert await pipeline.run() == []
    clock.advance(121)
    assert [a.rule for a in await pipeline.run()] == [Rule.HEARTBEAT_MISSING]


@sqlite_only
async def test_the_watchdog_runs_without_the_relay_and_only_while_active(
    pipeline: Pipeline, clock: FixedClock
) -> None:
    leader = False
    sink = pipeline.sink
    stop = asyncio.Event()
    watch = asyncio.create_task(sink.watch_heartbeat(stop, interval_s=0.01, active=lambda: leader))
    try:
        await asyncio.sleep(0.05)
        clock.advance(1_000)
        await asyncio.sleep(0.05)
        assert sink.heartbeat_checks == 0  # a standby does not check, so it stays silent
        leader = True
        await wait_until(lambda: sink.heartbeat_checks > 0)  # the first check: the baseline
        assert len(pipeline.subscription) == 0
        clock.advance(121)
        await wait_until(lambda: len(pipeline.subscription) > 0)
    finally:
        stop.set()
        await asyncio.wait_for(watch, timeout=2)
    assert [a.rule for a in drain(pipeline.subscription)] == [Rule.HEARTBEAT_MISSING]


# --------------------------------------------------------------------------------------------
# The sink's delivery: slow, failing and broken notifiers; unreadable events; closing
# --------------------------------------------------------------------------------------------


class StuckNotifier:
    """A notifier whose receiver hangs until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.received: list[Alert] = []
        self.closed = False

    @property
    def name(self) -> str:
        return "stuck"

    async def notify(self, alert: Alert) -> None:
        await self.release.wait()
        self.received.append(alert)

    async def close(self) -> None:
        self.closed = True


class BrokenNotifier:
    def __init__(self) -> None:
        self.calls = 0

    @property
    def name(self) -> str:
        return "broken"

    async def notify(self, alert: Alert) -> None:
        self.calls += 1
        raise RuntimeError(f"a bug in a notifier ({alert.rule})")

    async def close(self) -> None:
        return None


def admin_events(n: int, start: int = 0) -> list[RelayedEvent]:
    events = []
    for seq in range(start, start + n):
        event = ADMIN.event(
            "ledger.accounts.close",
            resource_type="account",
            resource_id=f"acc_{seq}",
            ts_us=1_767_225_600_000_000,
        ).to_json_object()
        canonical = orjson.dumps({**event, "seq": seq}, option=orjson.OPT_SORT_KEYS).decode()
        events.append(
            RelayedEvent(
                seq, event["event_id"], event["action"], "account", f"acc_{seq}", canonical, ""
            )
        )
    return events


async def test_a_stuck_notifier_holds_up_neither_the_relay_nor_the_others() -> None:
    clock = FixedClock()
    stuck, broken, channel = StuckNotifier(), BrokenNotifier(), ChannelNotifier()
    subscription = channel.subscribe()
    sink = AlertSink(AlertEngine(), [stuck, broken, channel], clock=clock, max_backlog=5)
    events = admin_events(8)
    await asyncio.wait_for(sink.publish(events), timeout=1)
    await wait_until(lambda: len(subscription) == 8)  # the channel got every alert meanwhile
    await wait_until(lambda: broken.calls == 8)  # each failure logged; its lane went on
    assert not await sink.flush(timeout_s=0.05)  # the stuck lane is still busy
    # Its queue is bounded: it holds the first alert, 5 are queued; once it made no room in
    # time, the oldest queued were dropped (and counted) for the newest.
    assert sink.dropped == 2
    stuck.release.set()
    assert await sink.flush()
    assert [a.event_ids for a in stuck.received] == [
        (e.event_id,) for e in [events[0], *events[3:]]
    ]
    await sink.close()
    assert stuck.closed


async def test_an_unreadable_event_raises_a_critical_alert() -> None:
    channel = ChannelNotifier()
    subscription = channel.subscribe()
    sink = AlertSink(AlertEngine(), [channel], clock=FixedClock())
    damaged = RelayedEvent(7, "evt_damaged", "x", None, None, "{not json", "00")
    await sink.publish([damaged])
    assert await sink.flush()
    [alert] = drain(subscription)
    assert (alert.rule, alert.severity, alert.details) == (
        Rule.EVENT_UNREADABLE,
        Severity.CRITICAL,
        {"seq": 7},
    )
    await sink.close()


async def test_close_delivers_what_is_queued_then_stops() -> None:
    channel = ChannelNotifier()
    subscription = channel.subscribe()
    sink = AlertSink(AlertEngine(), [channel], clock=FixedClock())
    await sink.publish(admin_events(3))
    await sink.close()
    assert len(drain(subscription)) == 3
    assert subscription.closed  # the channel's close ended it
    await sink.publish(admin_events(2, start=3))  # after close: evaluated, not delivered
    assert drain(subscription) == []


def test_the_backlog_is_bounded() -> None:
    with pytest.raises(ValueError, match="max_backlog"):
        AlertSink(AlertEngine(), [], clock=FixedClock(), max_backlog=0)
