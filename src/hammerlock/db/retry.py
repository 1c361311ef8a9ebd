"""One transaction, tried again when the database says another try can get past the failure.

Shared by the group-commit writers (ledger, bids): each runs a batch in one transaction and
retries it on the failures two concurrent transactions cause, with jittered backoff.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError

from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork

__all__ = ["MAX_ATTEMPTS", "in_transaction_with_retries", "transient"]

log = structlog.get_logger("hammerlock.db.retry")

T = TypeVar("T")

MAX_ATTEMPTS = 6
# serialization failure, deadlock, unique violation (a concurrent insert of the same key: the
# next try sees it), lock not available
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "23505", "55P03"})


def transient(exc: BaseException) -> bool:
    """A PostgreSQL failure of the kinds above, or SQLite's "database is locked"."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return sqlstate in _TRANSIENT_SQLSTATES or "database is locked" in str(orig)


async def in_transaction_with_retries(
    db: Database,
    body: Callable[[UnitOfWork], Awaitable[T]],
    *,
    event: str,
    retryable: Callable[[BaseException], bool] = transient,
) -> T:
    """``body`` in one transaction, run again (at most :data:`MAX_ATTEMPTS` in all) while it
    fails with what ``retryable`` accepts; each retry is logged as ``event``."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with db.transaction() as uow:
                return await body(uow)
        except DBAPIError as exc:
            if attempt == MAX_ATTEMPTS or not retryable(exc):
                raise
            log.info(event, attempt=attempt, reason=type(exc.orig).__name__)
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311 - jitter
    raise AssertionError("unreachable")  # pragma: no cover
