"""Startup mistakes — a wrong ``HAMMERLOCK_*`` setting, a database that is not there or will not
let us in — told in one line with what to do next, instead of a page of traceback. Anything
else is a bug and keeps its traceback (as does everything with ``HAMMERLOCK_DEBUG=1``)."""

from __future__ import annotations

import os
import re
import socket
import sys

import pydantic
import sqlalchemy.exc
import typer
from rich.console import Console
from rich.markup import escape

from hammerlock.errors import ConfigurationError

__all__ = ["explain", "run"]

_DRIVERS = frozenset({"psycopg", "psycopg2", "pymysql", "MySQLdb", "aiomysql", "asyncmy"})
_MISSING_DB = re.compile(r'database "([^"]{1,128})" does not exist')
_SETTINGS_DOC = "docs/configuration.md lists every setting and its limits"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "(no message)"


# What a database says when it cannot be used as configured (no database, no such role, a wrong
# password, nothing listening) — not errors a running command meets (a constraint, a lock).
_UNUSABLE_DB = re.compile(
    r"role \"[^\"]*\" does not exist|password authentication failed|no pg_hba\.conf entry|"
    r"could not connect|connection refused|unable to open database file|"
    r"could not translate host name|name or service not known",
    re.IGNORECASE,
)


def _explain_one(exc: BaseException) -> str | None:
    if isinstance(exc, pydantic.ValidationError) and exc.title == "Settings":
        problems = []
        for error in exc.errors()[:10]:
            field = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"HAMMERLOCK_{field.upper()}: {message}" if field else message)
        return f"configuration: {'; '.join(problems)}\n  Next: fix the variable ({_SETTINGS_DOC})."
    if isinstance(exc, ConfigurationError):
        return (
            f"configuration: {_first_line(str(exc))}\n  Next: fix the variable ({_SETTINGS_DOC})."
        )
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        detail = _first_line(str(exc.orig if exc.orig is not None else exc))
        missing = _MISSING_DB.search(detail)
        if missing:
            return (
                f"the database {missing[1]!r} does not exist.\n"
                f"  Next: create it (e.g. `createdb {missing[1]}`) and start again; hammerlock "
                "creates its own tables."
            )
        if not _UNUSABLE_DB.search(detail):
            return None  # a database error a command met while running: a bug's traceback
        return (
            f"cannot use the database: {detail}\n"
            "  Next: check HAMMERLOCK_DATABASE_URL (and HAMMERLOCK_VAULT_DATABASE_URL for the "
            "vault): user, password, host, port, database."
        )
    if isinstance(exc, sqlalchemy.exc.ArgumentError) and "URL" in str(exc):
        return (
            f"{_first_line(str(exc))}\n"
            "  Next: check HAMMERLOCK_DATABASE_URL, e.g. postgresql+asyncpg://user@host:5432/db "
            "or sqlite+aiosqlite:///var/hammerlock.db."
        )
    if isinstance(exc, ModuleNotFoundError) and exc.name in _DRIVERS:
        return (
            f"no database driver {exc.name!r} for that URL's scheme.\n"
            "  Next: use postgresql+asyncpg://user@host:5432/db (PostgreSQL) or "
            "sqlite+aiosqlite:///path (SQLite) in HAMMERLOCK_DATABASE_URL."
        )
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return (
            f"could not connect: {_first_line(str(exc))}\n"
            "  Next: start the service, or fix the URL setting that names it "
            "(HAMMERLOCK_DATABASE_URL, HAMMERLOCK_VAULT_URL, HAMMERLOCK_AUDIT_NATS_URL…)."
        )
    return None


def explain(exc: BaseException) -> str | None:
    """What to tell the user about ``exc`` (or the exception it was raised from, following
    ``raise … from``: never one that was merely being handled when a bug struck); None when
    it is not a setting or a database that cannot work as configured. ``HAMMERLOCK_DEBUG=1``
    shows the traceback anyway."""
    if os.environ.get("HAMMERLOCK_DEBUG") == "1":
        return None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        told = _explain_one(current)
        if told is not None:
            return told
        current = current.__cause__
    return None


def run(command: typer.Typer, args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run a Typer app as a console script, startup mistakes told in one line (exit code 2)."""
    try:
        command(args=args, prog_name=prog_name)
    except Exception as exc:
        told = explain(exc)
        if told is None:
            raise
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(told)}")
        sys.exit(2)
