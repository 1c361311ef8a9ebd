"""Card security codes, in memory only (PCI DSS 3.3.1: never stored after authorization).

A CVC lives in this process's memory for at most ``ttl_s`` (10 minutes) after tokenization and is
removed by its first use (:meth:`CvcCache.take`). Nothing here writes anywhere; a restart forgets
every code, which only means the next charge goes without one. Bounded: when full, the oldest
code is dropped first.
"""

from __future__ import annotations

from collections import OrderedDict

from hammerlock.clock import Clock

__all__ = ["CvcCache"]

DEFAULT_TTL_S = 600
DEFAULT_MAX_ENTRIES = 100_000


class CvcCache:
    def __init__(
        self, clock: Clock, *, ttl_s: int = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if ttl_s <= 0 or max_entries <= 0:
            raise ValueError("ttl_s and max_entries must be positive")
        self._clock = clock
        self._ttl_us = ttl_s * 1_000_000
        self._max = max_entries
        self._codes: OrderedDict[str, tuple[int, str]] = OrderedDict()  # token -> (expires, cvc)

    def __repr__(self) -> str:
        return f"CvcCache({len(self._codes)} held)"

    def __len__(self) -> int:
        self._expire()
        return len(self._codes)

    def put(self, token_id: str, cvc: str) -> None:
        self._expire()
        self._codes.pop(token_id, None)
        while len(self._codes) >= self._max:
            self._codes.popitem(last=False)
        self._codes[token_id] = (self._clock.now_us() + self._ttl_us, cvc)

    def take(self, token_id: str) -> str | None:
        """The code for ``token_id``, removed; ``None`` when there is none or it expired."""
        self._expire()
        entry = self._codes.pop(token_id, None)
        return None if entry is None else entry[1]

    def _expire(self) -> None:
        now = self._clock.now_us()
        while self._codes:
            token_id, (expires_us, _) = next(iter(self._codes.items()))
            if expires_us > now:
                return
            del self._codes[token_id]
