"""Retries and a circuit breaker around any :class:`~hammerlock.payments.gateways.base.Gateway`.

:class:`ResilientGateway` wraps one adapter and is itself a ``Gateway``. It retries **only**
retryable :class:`GatewayError`\\ s (:class:`GatewayTimeout`, :class:`GatewayUnavailable`), each
time with the *same* arguments and therefore the same idempotency key, so a retry can never
make a second charge. Waits follow exponential backoff with full jitter
(``uniform(0, min(max_delay_s, base_delay_s * 2**attempt))``, as AWS's architecture blog
recommends), so many callers retrying at once spread out instead of stampeding.

A bank's answer is not a failure: a declined :class:`Charge` is returned, never retried, and a
:class:`GatewayRejected` (the gateway refused the request itself) is raised at once.

One :class:`CircuitBreaker` per wrapped gateway::

    closed ──(breaker_threshold consecutive retryable failures)──▶ open
    open ──(breaker_reset_s elapsed)──▶ half-open: one trial call is let through
    half-open ──success──▶ closed        half-open ──retryable failure──▶ open again

While open, calls fail fast with :class:`GatewayUnavailable` (``circuit_open`` in the message)
without touching the gateway. Time and randomness are injected (``clock``, ``sleep``, ``rng``)
so tests run without waiting.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    Charge,
    Gateway,
    GatewayError,
    GatewayUnavailable,
    Payout,
    PayoutRequest,
    Refund,
    WebhookEvent,
)

if TYPE_CHECKING:
    from hammerlock.settings import Settings

__all__ = ["BreakerState", "CircuitBreaker", "ResilientGateway"]

RETRIES_MAX: Final = 10
"""The most retries one call may make (on top of the first attempt)."""

_T = TypeVar("_T")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive retryable failures of one gateway and opens after ``threshold``."""

    def __init__(self, *, threshold: int, reset_s: float, clock: Callable[[], float]) -> None:
        if threshold < 1 or reset_s <= 0:
            msg = "breaker threshold must be >= 1 and reset_s > 0"
            raise ValueError(msg)
        self._threshold = threshold
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._reset_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def before_call(self) -> None:
        """Raise :class:`GatewayUnavailable` unless a call may go through now."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True  # exactly one trial call while half-open
            return
        msg = "circuit_open: the gateway failed repeatedly; not calling it for now"
        raise GatewayUnavailable(msg)

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """A retryable failure (timeout, unreachable, 5xx)."""
        self._trial_in_flight = False
        if self._opened_at is not None:  # the half-open trial failed: open for another period
            self._opened_at = self._clock()
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._opened_at = self._clock()

    def record_neutral(self) -> None:
        """The gateway answered, but refused the request: it is up, so not a failure."""
        self.record_success()

    def record_unknown(self) -> None:
        """The call died of something else (a bug, a cancellation): no verdict on the gateway,
        but a half-open trial is over, so the next caller may try."""
        self._trial_in_flight = False


class ResilientGateway:
    """A :class:`Gateway` that retries retryable errors and trips a breaker. See module doc."""

    def __init__(
        self,
        inner: Gateway,
        *,
        retries: int = 3,
        base_delay_s: float = 0.2,
        max_delay_s: float = 5.0,
        breaker_threshold: int = 5,
        breaker_reset_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= retries <= RETRIES_MAX:
            msg = f"retries must be within 0..{RETRIES_MAX}"
            raise ValueError(msg)
        if base_delay_s < 0 or max_delay_s < base_delay_s:
            msg = "need 0 <= base_delay_s <= max_delay_s"
            raise ValueError(msg)
        self.inner = inner
        self.name = inner.name
        self._retries = retries
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # noqa: S311  # jitter, not crypto
        self.breaker = CircuitBreaker(
            threshold=breaker_threshold, reset_s=breaker_reset_s, clock=clock
        )

    @classmethod
    def from_settings(
        cls, inner: Gateway, settings: Settings, **overrides: Any
    ) -> ResilientGateway:
        """``inner`` with ``HAMMERLOCK_GATEWAY_RETRIES`` and the breaker settings."""
        options: dict[str, Any] = {
            "retries": settings.gateway_retries,
            "breaker_threshold": settings.gateway_breaker_threshold,
            "breaker_reset_s": settings.gateway_breaker_reset_s,
            **overrides,
        }
        return cls(inner, **options)

    async def aclose(self) -> None:
        """Close the wrapped adapter, when it has anything to close."""
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: a uniform wait in ``[0, min(max, base * 2**attempt)]``."""
        ceiling = min(self._max_delay_s, self._base_delay_s * (2**attempt))
        return self._rng.uniform(0, ceiling)

    async def _call(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        attempt = 0
        while True:
            self.breaker.before_call()
            try:
                result = await operation()
            except GatewayError as error:
                if not error.retryable:
                    self.breaker.record_neutral()
                    raise
                self.breaker.record_failure()
                if attempt >= self._retries:
                    raise
            except BaseException:
                self.breaker.record_unknown()
                raise
            else:
                self.breaker.record_success()
                return result
            await self._sleep(self.backoff_s(attempt))
            attempt += 1

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        return await self._call(lambda: self.inner.authorize(request))

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        return await self._call(lambda: self.inner.capture(gateway_key, amount))

    async def void(self, gateway_key: str) -> Charge:
        return await self._call(lambda: self.inner.void(gateway_key))

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        return await self._call(lambda: self.inner.refund(gateway_key, refund_key, amount))

    async def payout(self, request: PayoutRequest) -> Payout:
        return await self._call(lambda: self.inner.payout(request))

    async def find_payout(self, payout_key: str) -> Payout | None:
        return await self._call(lambda: self.inner.find_payout(payout_key))

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        return await self._call(lambda: self.inner.retrieve_by_idempotency_key(gateway_key))

    async def release_from_escrow(self, gateway_key: str) -> Charge:
        return await self._call(lambda: self.inner.release_from_escrow(gateway_key))

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Local verification: nothing to retry, and not counted by the breaker."""
        return self.inner.parse_webhook(headers, body)
