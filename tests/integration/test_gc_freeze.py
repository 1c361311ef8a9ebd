"""A served API process freezes what start-up built (full collections stop walking it: most of
the bids' p99) and collects its youngest generation less often (ADR 0015, 0024); apps built
elsewhere (tests, tools) do neither."""

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


async def test_a_served_app_raises_only_the_youngest_generations_threshold(
    app_settings: Settings, clock: FixedClock
) -> None:
    before = gc.get_threshold()
    try:
        plain = create_app(Container(app_settings, clock=clock, background=False))
        async with plain.router.lifespan_context(plain):
            assert gc.get_threshold() == before
        served = create_app(
            Container(app_settings, clock=clock, background=False),
            gc_gen0_threshold=app_settings.gc_gen0_threshold,
        )
        async with served.router.lifespan_context(served):
            assert gc.get_threshold() == (20_000, *before[1:])
    finally:
        gc.set_threshold(*before)
