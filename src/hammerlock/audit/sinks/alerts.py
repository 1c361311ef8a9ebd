"""The alert sink: the relay drives the :class:`~hammerlock.audit.alerts.AlertEngine` from the
log, in ``seq`` order, and the alerts go out through the notifiers.

``Relay(db, AlertSink(engine, notifiers, clock=clock), node=...)`` is all the wiring the event
rules need; the relay keeps the position (``relay:alerts``), so a restart resumes where the
engine stopped (its windows start empty). A redelivered event (at least once) is ignored by
the engine by ``seq`` and ``event_id``.

:meth:`AlertSink.publish` only evaluates: it feeds the engine (fast, in memory) and hands the
alerts to one queue per notifier, each drained by its own task, so a slow webhook neither holds
up the relay nor the other notifiers. A queue holds at most ``max_backlog`` alerts. When it is
full, ``publish`` waits up to ``room_timeout_s`` for its notifier to take one (a burst of alerts
from one page never overruns a fast notifier); a notifier that does not is *stalled*: its queue
drops the oldest alert for each new one, without waiting, until it has caught up. Drops are
counted (:attr:`AlertSink.dropped`) and logged; the audit log itself stays the record, and
alerts can be recomputed by replaying it.

The time-based rules:

- :meth:`AlertSink.lag_hook` adapts the engine's lag rule to a relay's ``on_lag`` hook, for the
  relays of the *other* sinks (JetStream, Kafka, archive);
- the dead-man's switch is checked on every publish (the relay publishes an empty page whenever
  it is idle) and by :meth:`AlertSink.watch_heartbeat`, a loop that does not depend on the relay
  it watches. Run it as a task with ``active=lambda: relay.is_leader`` so that a standby
  process, whose engine sees nothing, stays silent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import orjson
import structlog

from hammerlock.audit.alerts import Alert, AlertEngine
from hammerlock.audit.notifiers import Notifier
from hammerlock.audit.sinks import RelayedEvent
from hammerlock.clock import Clock
from hammerlock.tasks import cancel_and_wait

__all__ = ["AlertSink"]

log = structlog.get_logger("hammerlock.audit.sinks.alerts")


@dataclass(slots=True)
class _Lane:
    """One notifier's bounded queue and the task that drains it."""

    notifier: Notifier
    max_backlog: int
    queue: deque[Alert] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set: the queue has alerts
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set: the queue has room
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set: nothing queued or sending
    task: asyncio.Task[None] | None = None
    stalled: bool = False  # made no room in time: drops oldest without waiting until it drains
    dropped: int = 0

    def __post_init__(self) -> None:
        self.room.set()
        self.idle.set()

    @property
    def full(self) -> bool:
        return len(self.queue) >= self.max_backlog

    async def wait_for_room(self, timeout_s: float) -> None:
        if not self.full or self.stalled:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self.room.wait()
        except TimeoutError:
            self.stalled = True
            log.error(
                "audit.alert_notifier_stalled",
                notifier=self.notifier.name,
                backlog=len(self.queue),
                detail="dropping the oldest queued alerts until it catches up",
            )

    def put(self, alert: Alert) -> None:
        if self.full:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(alert)
        if self.full:
            self.room.clear()
        self.idle.clear()
        self.wake.set()

    async def run(self) -> None:
        while True:
            while not self.queue:
                if self.stalled:
                    self.stalled = False
                    log.info(
                        "audit.alert_notifier_caught_up",
                        notifier=self.notifier.name,
                        dropped=self.dropped,
                    )
                self.idle.set()
                self.wake.clear()
                await self.wake.wait()
            alert = self.queue.popleft()
            self.room.set()
            try:
                await self.notifier.notify(alert)
            except Exception:  # notifiers should not raise; one that does must not stop the lane
                log.exception(
                    "audit.alert_notifier_failed",
                    notifier=self.notifier.name,
                    alert_id=alert.alert_id,
                )


class AlertSink:
    def __init__(
        self,
        engine: AlertEngine,
        notifiers: Sequence[Notifier],
        *,
        clock: Clock,
        name: str = "alerts",
        max_backlog: int = 1_000,
        room_timeout_s: float = 0.05,
        close_timeout_s: float = 5.0,
    ) -> None:
        if not 1 <= max_backlog <= 100_000:
            raise ValueError("max_backlog must be 1..100,000")
        if not 0 <= room_timeout_s <= 5:
            raise ValueError("room_timeout_s must be 0..5")
        self.engine = engine
        self._clock = clock
        self._name = name
        self._room_timeout_s = room_timeout_s
        self._close_timeout_s = close_timeout_s
        self._lanes = [_Lane(n, max_backlog) for n in notifiers]
        self._closed = False
        self.raised = 0  # alerts handed to the notifiers
        self.heartbeat_checks = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def dropped(self) -> int:
        """Alerts dropped from a full notifier queue, over every notifier."""
        return sum(lane.dropped for lane in self._lanes)

    async def publish(self, events: Sequence[RelayedEvent]) -> None:
        for event in events:
            for alert in self._evaluate(event):
                for lane in self._lanes:  # a full queue: give its notifier a moment
                    await lane.wait_for_room(self._room_timeout_s)
                self.dispatch([alert])
        self.check_heartbeat()

    def dispatch(self, alerts: Iterable[Alert]) -> None:
        """Queue ``alerts`` for every notifier, never waiting: a full queue drops its oldest.
        Call from within the event loop."""
        if self._closed:
            return
        for alert in alerts:
            self.raised += 1
            for lane in self._lanes:
                if lane.task is None:
                    lane.task = asyncio.get_running_loop().create_task(
                        lane.run(), name=f"audit-alerts-{lane.notifier.name}"
                    )
                lane.put(alert)

    def on_lag(self, sink: str, lag: int, threshold: int) -> None:
        alert = self.engine.lag(sink, lag, threshold, self._clock.now_us())
        if alert is not None:
            self.dispatch([alert])

    def lag_hook(self, threshold: int) -> Callable[[str, int], None]:
        """An ``on_lag`` hook for a :class:`~hammerlock.audit.relay.Relay` whose
        ``lag_alert_threshold`` is ``threshold``."""

        def hook(sink: str, lag: int) -> None:
            self.on_lag(sink, lag, threshold)

        return hook

    def check_heartbeat(self) -> Alert | None:
        self.heartbeat_checks += 1
        alert = self.engine.check_heartbeat(self._clock.now_us())
        if alert is not None:
            self.dispatch([alert])
        return alert

    async def watch_heartbeat(
        self,
        stop: asyncio.Event,
        *,
        interval_s: float = 10.0,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        """Check the dead-man's switch every ``interval_s`` while ``active()``, until ``stop``."""
        while not stop.is_set():
            if active():
                self.check_heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued alert was handed to its notifier; whether that happened
        within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                for lane in self._lanes:
                    await lane.idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Deliver what is queued (within ``close_timeout_s``), then stop and close the
        notifiers."""
        if not await self.flush(self._close_timeout_s):
            left = sum(len(lane.queue) for lane in self._lanes)
            log.error("audit.alerts_undelivered_at_close", sink=self._name, alerts=left)
        self._closed = True
        await cancel_and_wait([lane.task for lane in self._lanes if lane.task is not None])
        for lane in self._lanes:
            lane.task = None
        for lane in self._lanes:
            await lane.notifier.close()

    def _evaluate(self, event: RelayedEvent) -> list[Alert]:
        try:
            parsed = orjson.loads(event.canonical)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return self.engine.feed((parsed,))
        unreadable = self.engine.unreadable(event.seq, event.event_id, self._clock.now_us())
        return [] if unreadable is None else [unreadable]
