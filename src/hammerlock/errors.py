"""The root of every domain's error tree.

Each domain keeps its own tree in ``<domain>/errors.py``; every class there derives from
:class:`DomainError` and carries a stable ``code`` (a contract with API clients). The HTTP
status for a code lives in one table, ``hammerlock.api.problems.STATUS_BY_CODE``, so the
domains never know about HTTP.

    DomainError
     ├── hammerlock.security.errors.SecurityError
     ├── hammerlock.ledger.errors.LedgerError
     └── ...
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["ConfigurationError", "DomainError"]


class DomainError(Exception):
    """An anticipated failure that the caller can act on. ``code`` is stable."""

    code: ClassVar[str] = "domain_error"
    title: ClassVar[str] = "Request could not be completed"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = extra


class ConfigurationError(ValueError):
    """A setting a process read at startup cannot work as given (the message names it); the
    CLI tells it in one line instead of a traceback."""
