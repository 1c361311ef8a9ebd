"""Card-testing defence: fixed-window counters per client address, per card, per failure.

In memory, per vault process (a scaled deployment multiplies the limits by its vault nodes; the
API's Redis-backed limiter can take over later). Bounded: at most ``max_keys`` counters; when
full, expired windows are dropped first, then the oldest counters.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from hammerlock.clock import Clock

__all__ = ["Limit", "RateLimiter"]

_MAX_KEYS = 200_000


@dataclass(frozen=True, slots=True)
class Limit:
    name: str  # "ip", "card", "failures": part of the counter's key
    limit: int
    window_s: int


class RateLimiter:
    def __init__(self, clock: Clock, *, max_keys: int = _MAX_KEYS) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._counters: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key -> (window, n)

    def retry_after_s(self, limit: Limit, subject: str) -> int | None:
        """Seconds until ``subject`` may go on, or ``None`` when it is under ``limit``."""
        window, now_s = self._window(limit)
        stored_window, count = self._counters.get(self._key(limit, subject), (window, 0))
        if stored_window != window:
            count = 0
        if count < limit.limit:
            return None
        return max(1, (window + 1) * limit.window_s - now_s)

    def hit(self, limit: Limit, subject: str) -> None:
        key = self._key(limit, subject)
        window, _ = self._window(limit)
        stored_window, count = self._counters.pop(key, (window, 0))
        self._counters[key] = (window, count + 1 if stored_window == window else 1)
        while len(self._counters) > self._max_keys:
            self._counters.popitem(last=False)

    def _window(self, limit: Limit) -> tuple[int, int]:
        now_s = self._clock.now_us() // 1_000_000
        return now_s // limit.window_s, now_s

    @staticmethod
    def _key(limit: Limit, subject: str) -> str:
        return f"{limit.name}\x00{subject}"
