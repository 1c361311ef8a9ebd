"""Where alerts go: pluggable notifiers behind one small protocol, :class:`Notifier`.

- :class:`LogNotifier`: one structured line, ``audit.alert``, at the alert's severity;
- :class:`WebhookNotifier`: a signed JSON POST with bounded retries;
- :class:`ChannelNotifier`: in-process pub/sub for the console and feeds.

A notifier's ``notify`` never raises on a delivery failure (it logs it): alerting is a side
channel and must not stop the relay that feeds it. ``notify`` calls for one notifier never
overlap (:class:`~hammerlock.audit.sinks.alerts.AlertSink` gives each its own queue).

Webhook signature (for receivers; :func:`verify_webhook` is the reference)::

    POST <url>
    Content-Type: application/json
    Hammerlock-Alert-Id: alr_…          (stable per alert: deduplicate retries by it)
    Hammerlock-Timestamp: 1767225600    (Unix seconds when this attempt was signed)
    Hammerlock-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

    {"alert_id": …, "rule": …, "severity": …, "summary": …, "event_ids": […], "ts": …,
     "details": {…}}

``body`` is the raw request body, byte for byte. Each attempt is signed afresh, so a retry after
a long backoff is not refused as stale. A receiver refuses a timestamp more than 300 s away
from its own clock (either way), which makes a captured request useless for replay after that;
within the window it deduplicates by ``Hammerlock-Alert-Id``. Several ``v1=`` values separated
by commas are accepted (a secret being rotated).

Retries: transport errors, per-attempt timeouts, 408, 425, 429 and 5xx are retried with
exponential backoff and jitter, up to ``max_attempts``; other answers are final.

Errors::

    Exception
     └── TooManySubscribers   channel_full: the channel already has max_subscribers
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Protocol

import httpx
import orjson
import structlog

from hammerlock.audit.alerts import Alert, Severity
from hammerlock.clock import Clock

__all__ = [
    "ALERT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "ChannelNotifier",
    "LogNotifier",
    "Notifier",
    "Subscription",
    "TooManySubscribers",
    "WebhookNotifier",
    "sign_webhook",
    "verify_webhook",
]

log = structlog.get_logger("hammerlock.audit.notifiers")

ALERT_ID_HEADER = "Hammerlock-Alert-Id"
TIMESTAMP_HEADER = "Hammerlock-Timestamp"
SIGNATURE_HEADER = "Hammerlock-Signature"
_SCHEME = "v1"
_MAX_SIGNATURES = 8  # v1= values looked at in one header
_MIN_SECRET_BYTES = 16
_RETRY_STATUSES = frozenset({408, 425, 429})


class Notifier(Protocol):
    @property
    def name(self) -> str:
        """Short and stable: it names the notifier in logs and metrics."""
        ...

    async def notify(self, alert: Alert) -> None:
        """Deliver ``alert``; log, never raise, when delivery fails."""
        ...

    async def close(self) -> None:
        """Release connections; end subscriptions."""
        ...


# --------------------------------------------------------------------------------------------
# Structured log
# --------------------------------------------------------------------------------------------


class _Logger(Protocol):
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def critical(self, event: str, **kw: Any) -> Any: ...


class LogNotifier:
    def __init__(self, logger: _Logger | None = None, *, name: str = "log") -> None:
        self._log: _Logger = logger or structlog.get_logger("hammerlock.audit.alerts")
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def notify(self, alert: Alert) -> None:
        emit = {
            Severity.INFO: self._log.info,
            Severity.WARNING: self._log.warning,
            Severity.CRITICAL: self._log.critical,
        }[alert.severity]
        emit(
            "audit.alert",
            alert_id=alert.alert_id,
            rule=alert.rule.value,
            severity=alert.severity.value,
            summary=alert.summary,
            event_ids=list(alert.event_ids),
            alert_ts=alert.ts,
            details=alert.details,
        )

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------
# Signed webhook
# --------------------------------------------------------------------------------------------


def _secret_bytes(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign_webhook(secret: bytes | str, timestamp: int, body: bytes) -> str:
    """The ``Hammerlock-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    return f"{_SCHEME}={_mac(_secret_bytes(secret), str(timestamp), body)}"


def verify_webhook(
    secret: bytes | str,
    timestamp: str,
    body: bytes,
    signature: str,
    now_s: float,
    *,
    tolerance_s: float = 300,
) -> bool:
    """Whether a received webhook is authentic and fresh: ``timestamp`` and ``signature`` are
    the header values as received, ``body`` the raw body, ``now_s`` the receiver's Unix time.
    Constant-time comparison; a timestamp more than ``tolerance_s`` away is refused."""
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return False
    if abs(now_s - int(timestamp)) > tolerance_s:
        return False
    expected = _mac(_secret_bytes(secret), timestamp, body).encode()
    matched = False
    for part in signature.split(",", _MAX_SIGNATURES)[:_MAX_SIGNATURES]:
        scheme, _, value = part.strip().partition("=")
        # Every candidate is compared (no early exit), each in constant time.
        same = hmac.compare_digest(value.encode("utf-8", "replace"), expected)
        matched = matched or (scheme == _SCHEME and same)
    return matched


@dataclass(frozen=True, slots=True)
class _Attempt:
    ok: bool
    retry: bool
    reason: str
    status: int | None = None


class WebhookNotifier:
    """POSTs each alert, signed, to ``url``; retries with backoff; never raises.

    ``client`` is injected in tests (``httpx.MockTransport``) or shared by the composition root;
    without one the notifier opens its own and closes it in :meth:`close`. ``sleep`` and ``rng``
    are injectable so tests need not wait out real backoff.
    """

    def __init__(
        self,
        url: str,
        secret: bytes | str,
        *,
        clock: Clock,
        client: httpx.AsyncClient | None = None,
        name: str = "webhook",
        max_attempts: int = 5,
        timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("webhook url must be an absolute http(s) URL")
        if len(_secret_bytes(secret)) < _MIN_SECRET_BYTES:
            raise ValueError(f"webhook secret must be at least {_MIN_SECRET_BYTES} bytes")
        if not 1 <= max_attempts <= 20 or not 0 < timeout_s <= 60:
            raise ValueError("need 1 <= max_attempts <= 20 and 0 < timeout_s <= 60")
        if not 0 < backoff_initial_s <= backoff_max_s <= 600:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s <= 600")
        self._url = parsed
        self._secret = _secret_bytes(secret)
        self._clock = clock
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._name = name
        self._max_attempts = max_attempts
        self._timeout_s = timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._sleep = sleep
        self.attempts = 0
        self.delivered = 0
        self.failed = 0

    def __repr__(self) -> str:  # never the secret, nor credentials or a token in the URL
        return f"WebhookNotifier(name={self._name!r}, host={self._url.host!r})"

    @property
    def name(self) -> str:
        return self._name

    async def notify(self, alert: Alert) -> None:
        try:
            await self.deliver(alert)
        except Exception:  # a bug here must not stop the alert pipeline; logged with its trace
            self.failed += 1
            log.exception("audit.alert_webhook_error", notifier=self._name, alert_id=alert.alert_id)

    async def deliver(self, alert: Alert) -> bool:
        """Send ``alert``, retrying; whether the receiver acknowledged it (2xx)."""
        body = orjson.dumps(alert.as_json(), option=orjson.OPT_SORT_KEYS)
        attempt = _Attempt(ok=False, retry=True, reason="not sent")
        for n in range(1, self._max_attempts + 1):
            attempt = await self._attempt(alert, body)
            if attempt.ok:
                self.delivered += 1
                return True
            if not attempt.retry or n == self._max_attempts:
                break
            await self._sleep(self.backoff_s(n))
        self.failed += 1
        log.error(
            "audit.alert_webhook_failed",
            notifier=self._name,
            host=self._url.host,
            alert_id=alert.alert_id,
            rule=alert.rule.value,
            attempts=n,
            status=attempt.status,
            reason=attempt.reason,
        )
        return False

    def backoff_s(self, attempt: int) -> float:
        """The pause after failed attempt ``attempt`` (1-based): half fixed, half jitter."""
        base_s = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** (attempt - 1))
        return base_s / 2 + self._rng.uniform(0, base_s / 2)

    async def _attempt(self, alert: Alert, body: bytes) -> _Attempt:
        self.attempts += 1
        timestamp = self._clock.now_us() // 1_000_000
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "hammerlock-alerts/1",
            ALERT_ID_HEADER: alert.alert_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign_webhook(self._secret, timestamp, body),
        }
        try:
            async with asyncio.timeout(self._timeout_s):
                status = await self._post(body, headers)
        except (httpx.HTTPError, TimeoutError) as exc:
            return _Attempt(ok=False, retry=True, reason=type(exc).__name__)
        if 200 <= status < 300:
            return _Attempt(ok=True, retry=False, reason="ok", status=status)
        retry = status in _RETRY_STATUSES or status >= 500
        return _Attempt(ok=False, retry=retry, reason=f"HTTP {status}", status=status)

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        # Streamed and not read: the answer's status is all we need, whatever its size.
        async with self._client.stream(
            "POST", self._url, content=body, headers=headers, timeout=self._timeout_s
        ) as response:
            return response.status_code

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


# --------------------------------------------------------------------------------------------
# In-process channel
# --------------------------------------------------------------------------------------------


class TooManySubscribers(Exception):
    """The channel already has its maximum of subscribers: close one first."""

    code: ClassVar[str] = "channel_full"


class Subscription:
    """One subscriber's view of a :class:`ChannelNotifier`: an async iterator of alerts.

    Its queue holds at most ``queue_size`` alerts; when full, the oldest is dropped and
    counted in :attr:`dropped`. Iteration ends once it is closed and drained. Use it as an
    async context manager (or call :meth:`close`) to unsubscribe.
    """

    def __init__(self, channel: ChannelNotifier, queue_size: int) -> None:
        self._channel = channel
        self._items: deque[Alert] = deque()
        self._queue_size = queue_size
        self._wake = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def _offer(self, alert: Alert) -> None:
        if len(self._items) >= self._queue_size:
            self._items.popleft()
            self.dropped += 1
            self._channel.dropped += 1
        self._items.append(alert)
        self._wake.set()

    def get_nowait(self) -> Alert | None:
        return self._items.popleft() if self._items else None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Alert:
        while not self._items:
            if self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()

    def close(self) -> None:
        self.closed = True
        self._channel._remove(self)
        self._wake.set()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ChannelNotifier:
    """Fan-out to in-process subscribers; publishing never waits for any of them."""

    def __init__(
        self, *, queue_size: int = 1_000, max_subscribers: int = 64, name: str = "channel"
    ) -> None:
        if not 1 <= queue_size <= 100_000 or not 1 <= max_subscribers <= 10_000:
            raise ValueError("need 1 <= queue_size <= 100,000 and 1 <= max_subscribers <= 10,000")
        self._queue_size = queue_size
        self._max_subscribers = max_subscribers
        self._subscribers: list[Subscription] = []
        self._name = name
        self.published = 0
        self.dropped = 0  # over every subscriber, past ones included

    @property
    def name(self) -> str:
        return self._name

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """A new subscription; it sees every alert published from now on."""
        if len(self._subscribers) >= self._max_subscribers:
            raise TooManySubscribers(f"{self._name} has {self._max_subscribers} subscribers")
        subscription = Subscription(self, self._queue_size)
        self._subscribers.append(subscription)
        return subscription

    async def notify(self, alert: Alert) -> None:
        self.published += 1
        for subscription in self._subscribers:
            subscription._offer(alert)

    async def close(self) -> None:
        """End every subscription (each still yields what it holds, then stops)."""
        for subscription in list(self._subscribers):
            subscription.close()

    def _remove(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
