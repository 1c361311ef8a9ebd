"""A served API process freezes what start-up built (full collections stop walking it: most of
the bids' p99); apps built elsewhere (tests, tools) do not."""

from __future__ import annotations

import gc

from hammerlock.api.app import create_app
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.settings import Settings


async def test_a_served_app_freezes_what_start_up_built(
    app_settings: Settings, clock: FixedClock
) -> None:
    gc.unfreeze()
    try:
        plain = create_app(Container(app_settings, clock=clock, background=False))
        async with plain.router.lifespan_context(plain):
            assert gc.get_freeze_count() == 0
        served = create_app(Container(app_settings, clock=clock, background=False), freeze_gc=True)
        async with served.router.lifespan_context(served):
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
