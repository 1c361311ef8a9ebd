"""Stopping background tasks never hangs: a task that loses a cancellation is cancelled again,
one that never ends is named and left behind within the timeout."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from hammerlock.tasks import cancel_and_wait, sleep_or_stop


async def test_a_plain_task_is_cancelled() -> None:
    task = asyncio.create_task(asyncio.sleep(60), name="plain")
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout_s=5) == []
    assert task.cancelled()


async def test_a_task_that_swallows_one_cancellation_gets_a_second() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # what a racing wait_for can do on Python 3.11
                raise

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout_s=2) == []
    assert swallowed == 2


async def test_a_task_that_never_ends_is_named_and_left_within_the_timeout() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with capture_logs() as logs:
        assert await cancel_and_wait([task], timeout_s=0.2) == ["deaf"]
    assert loop.time() - started < 5  # bounded (generous: shared machines are slow)
    [entry] = [e for e in logs if e["event"] == "tasks.not_stopped"]
    assert entry["task"] == "deaf"
    assert "deaf" in entry["stack"]
    release.set()
    task.cancel()
    await asyncio.sleep(0)
    await asyncio.wait([task], timeout=5)
    assert task.done()


async def test_a_task_that_failed_is_logged_not_raised() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken(), name="broken")
    await asyncio.sleep(0)
    with capture_logs() as logs:
        assert await cancel_and_wait([task], timeout_s=1) == []
    assert any(e["event"] == "tasks.failed" and "boom" in e["error"] for e in logs)


async def test_sleep_or_stop_ends_early_when_stopped() -> None:
    stop = asyncio.Event()
    sleeper = asyncio.create_task(sleep_or_stop(stop, 60))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(sleeper, timeout=5)
    await sleep_or_stop(stop, 60)  # already set: returns at once


@pytest.mark.parametrize("n", [0, 3])
async def test_nothing_or_finished_tasks_return_at_once(n: int) -> None:
    tasks = [asyncio.create_task(asyncio.sleep(0)) for _ in range(n)]
    await asyncio.gather(*tasks)
    assert await cancel_and_wait(tasks, timeout_s=1) == []


# On Python 3.11 ``wait_for`` returned normally when the stop was set in the same tick as the
# cancel (Container.stop does both), so a loop made one more pass — a sweep with payouts —
# while the process stopped (found in review).
async def test_a_loop_does_no_work_after_stop() -> None:
    stop = asyncio.Event()
    passes = 0

    async def loop() -> None:  # the shape of Container._escrow_sweeper_forever
        nonlocal passes
        while not stop.is_set():
            if await sleep_or_stop(stop, 60):
                break
            passes += 1  # escrow.sweep(ctx) / payments.janitor_pass(ctx) here

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    stop.set()  # Container.stop: set, then cancel_and_wait at once
    assert await cancel_and_wait([task], timeout_s=2) == []
    assert passes == 0
