"""Stopping the ledger writer answers the requests it never took (503 ``ledger_busy``, retry
with the same key) instead of leaving them to wait out their timeout."""

from __future__ import annotations

import asyncio

import pytest

from hammerlock.bootstrap import Container
from hammerlock.ledger.errors import LedgerBusy
from hammerlock.ledger.service import LedgerRequest
from hammerlock.ledger.writer import LedgerWriter


async def test_queued_requests_are_answered_at_stop(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = LedgerWriter(container.db, timeout_s=60)

    async def busy_elsewhere() -> None:  # a writer that takes nothing from its queue
        await asyncio.Event().wait()

    monkeypatch.setattr(writer, "_run", busy_elsewhere)
    await writer.start()
    waiting = asyncio.create_task(writer.submit(LedgerRequest(transfers=[], ctx=None)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await asyncio.wait_for(writer.stop(), timeout=30)
    with pytest.raises(LedgerBusy, match="stopping"):
        await asyncio.wait_for(waiting, timeout=5)


@pytest.mark.parametrize("linger_ms", [0, 200])
async def test_a_request_taken_into_a_batch_is_answered_at_stop(
    container: Container, monkeypatch: pytest.MonkeyPatch, linger_ms: int
) -> None:
    """Taken and then cancelled — while the batch lingers, or while it is being written: it may
    have committed, so the answer says to retry with the same key (a reviewer found these left
    to wait out their timeout)."""
    writer = LedgerWriter(container.db, timeout_s=60, linger_ms=linger_ms)
    writing = asyncio.Event()

    async def stuck_write(batch: list[object]) -> None:
        writing.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(writer, "_process", stuck_write)
    await writer.start()
    waiting = asyncio.create_task(writer.submit(LedgerRequest(transfers=[], ctx=None)))
    await asyncio.sleep(0.05)  # taken: lingering (200 ms) or stuck writing
    assert writing.is_set() is (linger_ms == 0)
    await asyncio.wait_for(writer.stop(), timeout=30)
    with pytest.raises(LedgerBusy, match="may have committed"):
        await asyncio.wait_for(waiting, timeout=5)
