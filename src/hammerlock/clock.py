"""Time, injected. Domains never call ``datetime.now()``; they take a :class:`Clock`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FixedClock", "SystemClock", "format_rfc3339", "from_us", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    def now_us(self) -> int:
        """Microseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1_000


class FixedClock:
    """A clock for tests: it moves only when told to."""

    def __init__(self, start_us: int = 1_767_225_600_000_000) -> None:  # 2026-01-01T00:00:00Z
        self._now_us = start_us

    def now_us(self) -> int:
        return self._now_us

    def advance(self, seconds: float = 0, *, us: int = 0) -> None:
        self._now_us += int(seconds * 1_000_000) + us


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def to_us(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError("naive datetime: a timezone is required")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_rfc3339(us: int) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-12-04T16:27:55.123456Z``."""
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
