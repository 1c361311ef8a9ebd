"""The deliverer: POSTs recorded webhook events to the endpoint, signed, until acknowledged.

Each round (:meth:`WebhookDeliverer.run_once`):

1. in one write transaction, claim up to ``batch_size`` due events
   (:func:`hammerlock.webhooks.storage.claim_due`): each claim is a per-event lease of
   ``claim_s``, longer than an attempt can take, so any number of deliverers (one per process)
   share the work and none sends an event another is sending. Events older than the maximum
   age are marked ``failed`` instead (with an audit event, ``webhook.delivery_failed``);
2. POST each claimed event concurrently, each within ``timeout_s`` (connect, send, read: all of
   it), reading at most ``max_response_bytes`` of the answer; redirects are not followed;
3. in one write transaction, record every attempt (``webhook_attempts``: attempt number, time,
   status code or error, duration) and move each event on: 2xx → ``delivered``; anything else →
   the next attempt per :class:`~hammerlock.webhooks.model.Backoff` (jittered exponential), or
   ``failed`` once that would pass the maximum age (3 days by default).

Delivery is at least once: a crash between 2 and 3 (or a claim that lapses mid-attempt) sends
the event again after ``claim_s``. Receivers deduplicate by ``Hammerlock-Event-Id``. There is no
ordering between events.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import structlog

from hammerlock.audit import service as audit_service
from hammerlock.audit.model import Context, Outcome
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork
from hammerlock.payments.gateways.signature import sign_header
from hammerlock.webhooks import storage
from hammerlock.webhooks.model import (
    EVENT_ID_HEADER,
    MIN_SECRET_BYTES,
    SIGNATURE_HEADER,
    AttemptOutcome,
    Backoff,
    EventStatus,
    classify_status,
)
from hammerlock.webhooks.storage import AttemptRow, ClaimedEvent

__all__ = ["DELIVERY_FAILED", "MAX_BATCH_SIZE", "WebhookDeliverer"]

log = structlog.get_logger("hammerlock.webhooks")

DELIVERY_FAILED = "webhook.delivery_failed"  # audit action when an event is given up on
MAX_BATCH_SIZE = 100
_MAX_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class _Result:
    event: ClaimedEvent
    ts_us: int
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return (
            self.status_code is not None
            and classify_status(self.status_code) is AttemptOutcome.DELIVERED
        )


class WebhookDeliverer:
    """Sends ``webhook_events`` to ``url``. One per process; they share the work safely.

    ``client`` is injected in tests or shared by the composition root; without one the deliverer
    opens its own and closes it in :meth:`close`. ``rng`` (jitter) and ``monotonic`` (attempt
    durations) are injectable; wall-clock time comes from the database's clock.
    """

    def __init__(
        self,
        db: Database,
        *,
        url: str,
        secret: bytes,
        node: str,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        batch_size: int = 20,
        claim_s: float | None = None,
        backoff: Backoff | None = None,
        poll_interval_s: float = 1.0,
        max_response_bytes: int = 4096,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("webhook url must be an absolute http(s) URL")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"webhook secret must be at least {MIN_SECRET_BYTES} bytes")
        if not 0 < timeout_s <= 60 or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"need 0 < timeout_s <= 60 and 1 <= batch_size <= {MAX_BATCH_SIZE}")
        claim_s = 3 * timeout_s + 10 if claim_s is None else claim_s
        if claim_s < 2 * timeout_s:
            raise ValueError("claim_s must be at least twice timeout_s")
        if poll_interval_s <= 0 or not 0 <= max_response_bytes <= 1024 * 1024:
            raise ValueError("need poll_interval_s > 0 and 0 <= max_response_bytes <= 1 MiB")
        self._db = db
        self._url = parsed
        self._secret = secret
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._timeout_s = timeout_s
        self._batch_size = batch_size
        self._claim_us = int(claim_s * 1_000_000)
        self.backoff = backoff or Backoff()
        self._poll_interval_s = poll_interval_s
        self._max_response_bytes = max_response_bytes
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._monotonic = monotonic
        self._ctx = Context.system("webhooks", node=node)
        self.token = secrets.token_hex(16)  # this deliverer's claims
        self.attempts = 0
        self.delivered = 0
        self.failed = 0

    def __repr__(self) -> str:  # never the secret, nor credentials or a token in the URL
        return f"WebhookDeliverer(host={self._url.host!r})"

    async def run_once(self) -> int:
        """One round; the number of delivery attempts made (0: nothing was due)."""
        claimed = await self._claim()
        if not claimed:
            return 0
        results = await asyncio.gather(*(self._attempt(event) for event in claimed))
        await self._record(results)
        return len(results)

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set or the task is cancelled; never raises."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                made = await self.run_once()
            except Exception:  # a database outage must not end delivery; logged with its trace
                log.exception("webhooks.round_failed")
                made = 0
            if made < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._poll_interval_s)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # ----------------------------------------------------------------------------------------

    async def _claim(self) -> list[ClaimedEvent]:
        async with self._db.transaction() as uow:
            now_us = uow.clock.now_us()
            cutoff_us = now_us - self.backoff.max_age_us
            for event_id, attempts in await storage.expired_due(
                uow, now_us=now_us, created_until_us=cutoff_us, limit=self._batch_size
            ):
                await self._give_up(uow, event_id, attempts, now_us, token=None)
            return await storage.claim_due(
                uow,
                now_us=now_us,
                created_after_us=cutoff_us,
                limit=self._batch_size,
                claim_until_us=now_us + self._claim_us,
                token=self.token,
            )

    async def _attempt(self, event: ClaimedEvent) -> _Result:
        self.attempts += 1
        ts_us = self._db.clock.now_us()
        body = event.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "hammerlock-webhooks/1",
            EVENT_ID_HEADER: event.id,
            SIGNATURE_HEADER: sign_header(self._secret, ts_us // 1_000_000, body),
        }
        started = self._monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                status_code = await self._post(body, headers)
        except TimeoutError:
            error = "timeout"
        except httpx.HTTPError as exc:
            error = self._describe(exc)
        duration_ms = max(0, int((self._monotonic() - started) * 1000))
        return _Result(event, ts_us, status_code, error, duration_ms)

    def _describe(self, exc: httpx.HTTPError) -> str:
        """The error's class and message, with the URL (which may carry a token) cut out."""
        message = str(exc).replace(str(self._url), f"<{self._url.host}>")
        return (type(exc).__name__ + (f": {message}" if message else ""))[:_MAX_ERROR_CHARS]

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        async with self._client.stream(
            "POST", self._url, content=body, headers=headers, timeout=self._timeout_s
        ) as response:
            read = 0  # read a little (lets the connection be reused), never a whole large body
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= self._max_response_bytes:
                    break
            return response.status_code

    async def _record(self, results: Sequence[_Result]) -> None:
        async with self._db.transaction() as uow:
            now_us = uow.clock.now_us()
            await storage.insert_attempts(
                uow,
                [
                    AttemptRow(
                        r.event.id, r.event.attempt, r.ts_us, r.status_code, r.error, r.duration_ms
                    )
                    for r in results
                ],
            )
            for r in results:
                await self._settle(uow, r, now_us)

    async def _settle(self, uow: UnitOfWork, r: _Result, now_us: int) -> None:
        if r.delivered:
            if await storage.finish(
                uow, r.event.id, EventStatus.DELIVERED, now_us=now_us, token=None
            ):
                self.delivered += 1
            return
        due_us = self.backoff.next_attempt_us(
            r.event.created_us, now_us, r.event.attempt, self._rng.random()
        )
        if due_us is None:
            await self._give_up(uow, r.event.id, r.event.attempt, now_us, token=self.token)
            return
        await storage.reschedule(uow, r.event.id, token=self.token, next_attempt_us=due_us)
        log.info(
            "webhooks.attempt_failed",
            event_id=r.event.id,
            attempt=r.event.attempt,
            status_code=r.status_code,
            error=r.error,
            retry_in_s=(due_us - now_us) // 1_000_000,
        )

    async def _give_up(
        self, uow: UnitOfWork, event_id: str, attempts: int, now_us: int, *, token: str | None
    ) -> None:
        if not await storage.finish(uow, event_id, EventStatus.FAILED, now_us=now_us, token=token):
            return
        self.failed += 1
        log.error("webhooks.delivery_failed", event_id=event_id, attempts=attempts)
        await audit_service.record(
            uow,
            self._ctx.event(
                DELIVERY_FAILED,
                resource_type="webhook_event",
                resource_id=event_id,
                ts_us=now_us,
                outcome=Outcome.FAILURE,
                outcome_code="webhook_delivery_failed",
                details={"attempts": attempts, "host": self._url.host},
            ),
        )
