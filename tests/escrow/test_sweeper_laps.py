"""The sweepers read their queues sorted by last update with the lap bound on
(`hammerlock.db.queues`, `tests/unit/test_queues.py`): every such queue's read passes the
pass's clock, so a cursor cannot chase the orders and payments a pass touches."""

from __future__ import annotations

from typing import Any

import pytest

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.queues import Cursors, Key
from tests.escrow.conftest import SYSTEM, install
from tests.payments.fake_gateway import FakeGateway

ESCROW_QUEUES = {
    "interrupted", "waiting", "due", "unshipped", "shipped", "inspected", "payouts",
    "no_destination", "refunds", "offers",
}  # fmt: skip
JANITOR_BY_UPDATE = {"stuck", "waiting"}  # the others sort by an expiry or a start time


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    original = Cursors.read

    def spy(self: Cursors, queue: str, keys: list[Key], limit: int, *, now: Any = None) -> None:
        seen.append((queue, now))
        original(self, queue, keys, limit, now=now)

    monkeypatch.setattr(Cursors, "read", spy)
    return seen


async def test_escrow_sweeper_reads_every_queue_with_its_clock(
    container: Container, clock: FixedClock, reads: list[tuple[str, Any]]
) -> None:
    escrow = install(container, FakeGateway())
    await escrow.sweep(SYSTEM)
    assert {q for q, _ in reads} == ESCROW_QUEUES
    assert all(now == clock.now_us() for _, now in reads)


async def test_janitor_reads_its_update_sorted_queues_with_its_clock(
    container: Container, clock: FixedClock, reads: list[tuple[str, Any]]
) -> None:
    install(container, FakeGateway())
    await container.payments.janitor_pass(SYSTEM)
    by_queue = dict(reads)
    assert by_queue.keys() >= JANITOR_BY_UPDATE
    assert all(by_queue[q] == clock.now_us() for q in JANITOR_BY_UPDATE)
    assert all(now is None for q, now in by_queue.items() if q not in JANITOR_BY_UPDATE)
