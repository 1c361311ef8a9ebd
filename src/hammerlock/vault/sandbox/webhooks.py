"""The sandbox's outbound webhooks: the ``events`` outbox, delivered signed to one URL.

Every charge change writes its event (``evt_…``) in the same transaction as the change. After
the change the gateway asks :class:`WebhookSender` to :meth:`~WebhookSender.flush`: pending
events are POSTed in order, each with ``Hammerlock-Signature: t=<unix>,v1=<hex>`` (see
:mod:`hammerlock.payments.gateways.signature`), a bounded timeout and a few retries; an event
that still fails stays pending for the next flush, up to ``max_total_attempts``. Vault processes
sharing the database may both deliver one event: receivers deduplicate by event id, as they
must with any gateway.

Faults: ``duplicate_webhooks`` sends each event twice; ``out_of_order_webhooks`` holds events
for ``hold_s`` so bursts gather, then sends each batch newest first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import httpx

from hammerlock.clock import Clock
from hammerlock.payments.gateways.signature import SIGNATURE_HEADER, sign_header
from hammerlock.vault.sandbox import store
from hammerlock.vault.sandbox.faults import FaultName, Faults

__all__ = ["WebhookSender"]

_BATCH_MAX: Final = 100
_RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})


class WebhookSender:
    """Delivers the ``events`` outbox of the database at ``db_path`` to ``url``."""

    def __init__(
        self,
        url: str,
        secret: bytes | str,
        *,
        db_path: Path,
        clock: Clock,
        faults: Faults,
        client: httpx.AsyncClient | None = None,
        attempts_per_flush: int = 3,
        max_total_attempts: int = 20,
        timeout_s: float = 5.0,
        backoff_s: float = 0.2,
        hold_s: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("sandbox webhook url must be an absolute http(s) URL")
        if not 1 <= attempts_per_flush <= 10 or not 0 < timeout_s <= 60:
            raise ValueError("need 1 <= attempts_per_flush <= 10 and 0 < timeout_s <= 60")
        self._url = parsed
        self._secret = secret
        self._db_path = db_path
        self._clock = clock
        self._faults = faults
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._attempts_per_flush = attempts_per_flush
        self._max_total_attempts = max_total_attempts
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._hold_s = hold_s
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never the secret
        return f"WebhookSender(host={self._url.host!r})"

    def kick(self) -> None:
        """Flush soon, in the background (one flush at a time; a kick during one reruns it)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._background())

    async def _background(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            if self._faults.plan.get(FaultName.OUT_OF_ORDER_WEBHOOKS) is not None:
                await self._sleep(self._hold_s)
            await self.flush()

    async def flush(self) -> int:
        """Deliver what is pending now; the number of events delivered."""
        async with self._lock:
            events = await asyncio.to_thread(self._pending)
            if self._faults.fires(FaultName.OUT_OF_ORDER_WEBHOOKS):
                events.reverse()
            delivered = 0
            for event in events:
                ok = await self._deliver(event.body)
                if ok and self._faults.fires(FaultName.DUPLICATE_WEBHOOKS):
                    await self._deliver(event.body)
                now_us = self._clock.now_us()
                await asyncio.to_thread(self._mark, event.seq, now_us if ok else None)
                delivered += ok
            return delivered

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    def _pending(self) -> list[store.EventRow]:
        with store.read(self._db_path) as conn:
            return store.pending_events(
                conn, limit=_BATCH_MAX, max_attempts=self._max_total_attempts
            )

    def _mark(self, seq: int, delivered_us: int | None) -> None:
        with store.write(self._db_path) as conn:
            store.mark_event_attempt(conn, seq, delivered_us=delivered_us)

    async def _deliver(self, body: bytes) -> bool:
        for attempt in range(self._attempts_per_flush):
            if attempt:
                await self._sleep(self._backoff_s * 2 ** (attempt - 1))
            timestamp_s = self._clock.now_us() // 1_000_000
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign_header(self._secret, timestamp_s, body),
            }
            try:
                response = await self._client.post(
                    self._url, content=body, headers=headers, timeout=self._timeout_s
                )
            except httpx.HTTPError:
                continue  # transport trouble or timeout: retry
            if response.is_success:
                return True
            if response.status_code < 500 and response.status_code not in _RETRYABLE_STATUSES:
                return False  # the receiver refused it; stays pending for a later flush
        return False
