"""A served API process freezes what start-up built (full collections stop walking it: most of
the bids' p99) and collects its youngest generation less often (ADR 0015, 0024); apps built
elsewhere (tests, tools) do neither."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from hammerlock.api import factory
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
            assert gc.get_threshold() == (app_settings.gc_gen0_threshold, *before[1:])
    finally:
        gc.set_threshold(*before)


def test_the_served_process_factory_passes_both_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: dict[str, Any] = {}
    monkeypatch.setattr(factory, "build_app", lambda _settings, **kw: made.update(kw))
    monkeypatch.setattr(factory, "configure_logging", lambda *_: None)
    monkeypatch.setenv("HAMMERLOCK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HAMMERLOCK_GC_GEN0_THRESHOLD", "1234")
    monkeypatch.delenv("HAMMERLOCK_GC_FREEZE", raising=False)
    factory.app_from_env()
    assert made == {"freeze_gc": True, "gc_gen0_threshold": 1234}
