"""Structured logging: JSON lines with the request id, card numbers masked, secrets dropped.

The redaction processor runs last before rendering, on every event: any value that looks like a
card number (digits with optional spaces or dashes, passing Luhn *and* matching a known brand's
prefix and length) is masked to first 6 / last 4; values under keys named like secrets are
replaced wholesale.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from hammerlock.security.pan import redact_pans

__all__ = ["configure_logging", "redact_event"]

_SECRET_KEY = re.compile(
    r"(password|passwd|passphrase|secret|token|cvc|cvv|authorization|api[_-]?key|pepper"
    r"|card[_-]?number|cookie|private[_-]?key|signature"
    # Short words only as whole words, or "company", "span_id" and "passed" would be dropped.
    r"|(?<![a-z])(?:pan|pass)(?![a-z]))",
    re.IGNORECASE,
)
_REDACTED = "[redacted]"
_MAX_DEPTH = 8


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, str):
        return redact_pans(value)
    if isinstance(value, Mapping):
        return {
            k: (_REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    if isinstance(value, BaseException):
        return redact_pans(repr(value))
    return value


def redact_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask card numbers, drop secret-named values."""
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = _REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_event,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Route stdlib loggers (uvicorn, sqlalchemy) through the same processors.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # we log requests ourselves
    # httpx logs every request it makes at info (the vault polls among them): the calls that
    # matter are logged by our own clients, with what they mean.
    # At debug they are kept (HAMMERLOCK_LOG_LEVEL=debug shows every call).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(
            logging.WARNING if root.level > logging.DEBUG else root.level
        )
