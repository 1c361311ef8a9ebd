"""Where the audit relay ships the log: the :class:`AuditSink` protocol and what it carries.

A sink receives pages of :class:`RelayedEvent` in ``seq`` order, gap-free, and returns from
:meth:`AuditSink.publish` only once every event of the page is durably acknowledged by the
outside system. It raises a :class:`SinkError` otherwise; the relay then backs off and resends
from the first unacknowledged event (``SinkError.acked`` events into the page are kept), so a sink
sees events again after a failure and must absorb repeats by ``event_id`` (JetStream's
``Nats-Msg-Id``, Kafka's ``event_id`` header for consumers, the archive by ``seq``).

An empty page is a heartbeat the relay sends when idle: sinks with time-based work (the archive
seals a segment that is due) do it then; others return at once.

Errors (``code`` is stable; every one means "retry later, and page someone if it lasts")::

    Exception
     └── SinkError            sink_error: the page was not (wholly) acknowledged
          ├── SinkUnavailable sink_unavailable: transport down, timed out, no ack
          └── SinkRejected    sink_rejected: the sink answered with an error (config, quota,
                              an out-of-order page)

Implementations: :mod:`.jetstream` (NATS JetStream), :mod:`.kafka` (Kafka), :mod:`.archive`
(sealed gzip segments), :mod:`.memory` (an in-process test double that can be told to fail).
All pass one contract suite (``tests/integration/test_audit_relay.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

__all__ = [
    "AuditSink",
    "RelayedEvent",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
]


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """One ``audit_log`` row as the relay serves it.

    ``canonical`` is the event's RFC 8785 (JCS) text exactly as hashed into the Merkle tree (it
    holds ``seq``); :meth:`payload` is that object plus ``leaf_hash``, i.e. the event exactly as
    ``GET /v1/audit/events`` lists it. A consumer checks it by removing ``leaf_hash``,
    re-canonicalising, and comparing SHA-256(0x00 || bytes) with ``leaf_hash``.
    """

    seq: int
    event_id: str
    action: str
    resource_type: str | None
    resource_id: str | None
    canonical: str
    leaf_hash: str

    def payload(self) -> bytes:
        # JCS text is a JSON object ("{...}", never "{}": it always holds seq and event_id), so
        # splicing one more member before the closing brace keeps it valid JSON without a parse.
        return f'{self.canonical[:-1]},"leaf_hash":"{self.leaf_hash}"}}'.encode()


class SinkError(Exception):
    """The sink did not acknowledge the whole page; the relay retries from event ``acked``."""

    code: ClassVar[str] = "sink_error"

    def __init__(self, detail: str, *, sink: str, acked: int = 0) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sink = sink
        self.acked = acked  # events at the start of the page that the sink did acknowledge


class SinkUnavailable(SinkError):
    code = "sink_unavailable"


class SinkRejected(SinkError):
    code = "sink_rejected"


class AuditSink(Protocol):
    """A destination of the audit log. One relay drives one sink; calls never overlap."""

    @property
    def name(self) -> str:
        """Stable and unique per destination: the relay keeps its position under it."""
        ...

    async def publish(self, events: Sequence[RelayedEvent]) -> None:
        """Return once every event is acknowledged; raise :class:`SinkError` otherwise."""
        ...

    async def close(self) -> None:
        """Release connections and files; flush what is pending when it can."""
        ...
