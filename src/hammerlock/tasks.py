"""Background tasks that always stop: every wait on a task has a timeout.

A cancelled task normally ends at its next ``await``. It may not: Python 3.11's
``asyncio.wait_for`` can swallow a cancellation that races with its inner future, and a
database driver's cleanup can wait on a worker thread. A ``while True`` loop that lost its
cancellation runs forever, and ``task.cancel(); await task`` then hangs shutdown for good (a CI
run of the suite hung five minutes in ``Container.stop`` this way). So:

- loops run ``while not stop.is_set()`` and sleep with :func:`sleep_or_stop`, so a lost
  cancellation still ends them at the next turn;
- whoever stops tasks uses :func:`cancel_and_wait`: it cancels, waits at most ``timeout_s``,
  cancels once more whatever is left, and names (with its stack) any task that still runs —
  shutdown goes on either way.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

STOP_TIMEOUT_S = 10.0


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile; True when stopped — the caller
    then leaves its loop without another pass. (``asyncio.timeout``, not ``wait_for``: on
    Python 3.11 ``wait_for`` returns normally when ``stop`` is set in the same tick as a
    cancellation, swallowing it.)"""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return stop.is_set()
    return True


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]],
    *,
    timeout_s: float = STOP_TIMEOUT_S,
) -> list[str]:
    """Cancel ``tasks`` and wait for them, at most ``timeout_s`` in all; returns the names of
    those that did not end (logged as ``tasks.not_stopped`` with their stacks). Exceptions the
    tasks end with are logged, not raised: a stopping process has nobody to hand them to."""
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    for task in pending:
        task.cancel()
    if pending:  # half the time for the first cancel, the rest after a second one
        _, pending = await asyncio.wait(pending, timeout=timeout_s / 2)
        for task in pending:
            task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout_s / 2)
    for task in every:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("tasks.failed", task=task.get_name(), error=repr(task.exception()))
    names = sorted(task.get_name() for task in pending)
    for task in pending:
        stack = io.StringIO()
        task.print_stack(limit=20, file=stack)
        log.error("tasks.not_stopped", task=task.get_name(), stack=stack.getvalue())
    return names
