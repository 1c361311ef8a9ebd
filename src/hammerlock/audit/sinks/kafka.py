"""Kafka sink (confluent-kafka / librdkafka): an idempotent producer, every delivery checked.

Producer settings that the audit trail relies on (an operator's ``config`` cannot weaken them):
``acks=all`` and ``enable.idempotence=true`` (librdkafka then keeps produce order across its own
retries, with at most 5 requests in flight), and ``message.timeout.ms`` = ``delivery_timeout_s``
so a broker outage turns into failed deliveries instead of an endless wait.

Each event is one record: value = the event as served (canonical JSON plus ``leaf_hash``), key =
its resource id (the event id when it has none), headers ``event_id`` (the deduplication key for
consumers: Kafka's idempotence only covers one producer session) and ``seq``. By default every
record goes to partition 0 so the topic holds the log in one total order; ``partition=None``
spreads by key instead, which keeps order per resource only (consumers then order by ``seq``).

A page is acknowledged when ``flush`` has returned and every delivery report of the page came
back without error. librdkafka's calls block, so a page runs in a worker thread
(``asyncio.to_thread``) and is bounded by ``delivery_timeout_s`` on both sides.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message, Producer

from hammerlock.audit.sinks import RelayedEvent, SinkRejected, SinkUnavailable

__all__ = ["DEFAULT_TOPIC", "KafkaSink"]

log = structlog.get_logger("hammerlock.audit.sinks.kafka")

DEFAULT_TOPIC = "hammerlock.audit"
_SAFETY_MARGIN_S = 5.0
_BUFFER_FULL_POLL_S = 0.01
_REQUIRED = {"acks": "all", "enable.idempotence": True}


class KafkaSink:
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        name: str = "kafka",
        topic: str = DEFAULT_TOPIC,
        partition: int | None = 0,
        delivery_timeout_s: float = 8.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if delivery_timeout_s <= 0:
            raise ValueError("KafkaSink: delivery_timeout_s must be positive")
        self._name = name
        self.topic = topic
        self._partition = -1 if partition is None else partition
        self._delivery_timeout_s = delivery_timeout_s
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": f"hammerlock-audit-relay:{name}",
            "linger.ms": 5,
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            **(config or {}),
            **_REQUIRED,
        }
        self._producer: Producer | None = None
        self._in_flight: asyncio.Future[_Reports] | None = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self._name

    async def publish(self, events: Sequence[RelayedEvent]) -> None:
        if not events:
            return
        async with self._lock:
            if self._in_flight is not None and not self._in_flight.done():
                # A page abandoned by a cancelled caller is still producing in its thread;
                # starting another would interleave the two.
                raise SinkUnavailable("the previous page is still in flight", sink=self._name)
            producer = self._producer or self._new_producer()
            self._in_flight = asyncio.ensure_future(
                asyncio.to_thread(self._produce_page, producer, events)
            )
            try:
                reports = await asyncio.wait_for(
                    asyncio.shield(self._in_flight),
                    timeout=self._delivery_timeout_s + _SAFETY_MARGIN_S,
                )
            except TimeoutError as exc:  # the worker overran its own deadline: start afresh
                self._producer = None
                raise SinkUnavailable(
                    f"page from seq {events[0].seq}: no delivery reports in time",
                    sink=self._name,
                ) from exc
            self._check(events, reports)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(self._close_producer, producer)

    # ----------------------------------------------------------------------------------------

    def _new_producer(self) -> Producer:
        self._producer = Producer(dict(self._config))
        return self._producer

    def _close_producer(self, producer: Producer) -> None:
        remaining = producer.flush(self._delivery_timeout_s)
        if remaining:
            log.warning("audit.kafka_close_unflushed", sink=self._name, remaining=remaining)
        producer.close()

    def _produce_page(self, producer: Producer, events: Sequence[RelayedEvent]) -> _Reports:
        """In a worker thread: produce every event in order, flush, return the delivery
        reports."""
        deadline = time.monotonic() + self._delivery_timeout_s
        reports = _Reports(len(events))
        for i, event in enumerate(events):
            on_delivery = functools.partial(reports.record, i)
            if not self._produce_one(producer, event, on_delivery, deadline):
                break
        producer.flush(max(0.0, deadline - time.monotonic()))
        return reports

    def _produce_one(
        self, producer: Producer, event: RelayedEvent, on_delivery: Any, deadline: float
    ) -> bool:
        while True:
            try:
                producer.produce(
                    self.topic,
                    value=event.payload(),
                    key=(event.resource_id or event.event_id).encode(),
                    partition=self._partition,
                    on_delivery=on_delivery,
                    headers=[
                        ("event_id", event.event_id.encode()),
                        ("seq", str(event.seq).encode()),
                    ],
                )
                return True
            except BufferError:  # the local queue is full: serve delivery reports, then retry
                if time.monotonic() >= deadline:
                    return False
                producer.poll(_BUFFER_FULL_POLL_S)

    def _check(self, events: Sequence[RelayedEvent], reports: _Reports) -> None:
        acked = reports.acked_prefix()
        if acked == len(events):
            return
        where = f"event seq {events[acked].seq}"
        error = reports.errors[acked]
        if error is None:
            raise SinkUnavailable(f"{where}: not delivered in time", sink=self._name, acked=acked)
        if error.fatal():  # this idempotent producer cannot go on: a new one resends
            self._producer = None
        if error.retriable() or error.fatal() or error.code() == KafkaError._MSG_TIMED_OUT:
            raise SinkUnavailable(f"{where}: {error.str()}", sink=self._name, acked=acked)
        raise SinkRejected(f"{where}: {error.str()}", sink=self._name, acked=acked)


class _Reports:
    """Delivery reports of one page, filled in by librdkafka's callbacks."""

    __slots__ = ("delivered", "errors")

    def __init__(self, size: int) -> None:
        self.delivered = [False] * size
        self.errors: list[KafkaError | None] = [None] * size

    def record(self, index: int, error: KafkaError | None, _msg: Message) -> None:
        if error is None:
            self.delivered[index] = True
        else:
            self.errors[index] = error

    def acked_prefix(self) -> int:
        return next((i for i, ok in enumerate(self.delivered) if not ok), len(self.delivered))
