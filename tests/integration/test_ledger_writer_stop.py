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
