"""The container's stop ends every background loop, even one that lost a cancellation (Python
3.11's ``wait_for`` can swallow one): a CI run once hung five minutes in ``Container.stop``."""

from __future__ import annotations

import asyncio

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.settings import Settings


async def test_stop_ends_a_loop_that_swallowed_its_cancellation(
    app_settings: Settings, clock: FixedClock
) -> None:
    settings = app_settings.model_copy(update={"escrow_sweeper_interval_s": 0.05})
    container = Container(settings, clock=clock, background=True)
    calls = 0
    swallowed = asyncio.Event()
    entered = asyncio.Event()

    async def sweep_that_swallows(ctx: object) -> dict[str, int]:
        nonlocal calls
        calls += 1
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # and carry on as if nothing happened
        return {}

    container.escrow.sweep = sweep_that_swallows  # type: ignore[method-assign]
    await container.start()
    await asyncio.wait_for(entered.wait(), timeout=30)
    await asyncio.wait_for(container.stop(), timeout=60)
    assert swallowed.is_set()
    assert calls == 1  # the loop saw the stop and did not sweep again
