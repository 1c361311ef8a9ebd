"""An in-process sink: a first-class test double (httpx's ``MockTransport`` in spirit).

It keeps every delivery (repeats included) and, like JetStream, a deduplicated view by
``event_id``. Tests make it fail on purpose: ``down = True`` refuses every page, and
:meth:`MemorySink.fail_next` refuses the next page after acknowledging its first events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from hammerlock.audit.sinks import RelayedEvent, SinkUnavailable

__all__ = ["MemorySink"]


class MemorySink:
    def __init__(self, name: str = "memory", *, max_events: int = 1_000_000) -> None:
        self._name = name
        self._max_events = max_events
        self.deliveries: list[RelayedEvent] = []  # every event received, repeats included
        self.stored: list[RelayedEvent] = []  # first delivery of each event_id, in arrival order
        self._seen: set[str] = set()
        self.down = False
        self.closed = False
        self.publish_calls = 0
        self._fail_pages = 0
        self._fail_acked = 0
        # Runs before each non-empty page is taken (a test uses it to race another relay).
        self.before_publish: Callable[[Sequence[RelayedEvent]], Awaitable[None]] | None = None

    @property
    def name(self) -> str:
        return self._name

    def fail_next(self, pages: int = 1, *, acked: int = 0) -> None:
        """Refuse the next ``pages`` non-empty pages, each after storing its first ``acked``."""
        self._fail_pages = pages
        self._fail_acked = acked

    async def publish(self, events: Sequence[RelayedEvent]) -> None:
        if not events:
            return
        self.publish_calls += 1
        if self.before_publish is not None:
            await self.before_publish(events)
        if self.down:
            raise SinkUnavailable("memory sink is down", sink=self._name)
        if self._fail_pages > 0:
            self._fail_pages -= 1
            acked = min(self._fail_acked, len(events))
            self._take(events[:acked])
            raise SinkUnavailable("memory sink failed on purpose", sink=self._name, acked=acked)
        self._take(events)

    def _take(self, events: Sequence[RelayedEvent]) -> None:
        if len(self.deliveries) + len(events) > self._max_events:
            raise SinkUnavailable("memory sink is full", sink=self._name)
        self.deliveries.extend(events)
        for event in events:
            if event.event_id not in self._seen:
                self._seen.add(event.event_id)
                self.stored.append(event)

    async def close(self) -> None:
        self.closed = True
