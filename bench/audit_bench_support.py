"""What the audit benchmarks share: scratch databases on both backends, the machine's line, and
appending a section to docs/benchmarks.md. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import resource
import secrets
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from hammerlock.clock import SystemClock
from hammerlock.db.engine import Database, create_database
from hammerlock.db.migrate import migrate
from hammerlock.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("HAMMERLOCK_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@contextlib.asynccontextmanager
async def scratch_database(backend: str) -> AsyncIterator[tuple[Database, Settings]]:
    """A freshly migrated database of ``backend`` ("sqlite" in a temp dir, or "postgresql" as a
    new database on the local server), dropped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="hl-audit-bench-"))
    name = f"hl_audit_bench_{os.getpid()}_{secrets.token_hex(3)}"
    url = None
    if backend == "postgresql":
        admin = await asyncpg.connect(f"{PG}/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        url = f"{PG.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    settings = Settings(data_dir=root, database_url=url)
    db = create_database(settings, SystemClock())
    try:
        await migrate(db)
        yield db, settings
    finally:
        await db.dispose()
        if backend == "postgresql":
            admin = await asyncpg.connect(f"{PG}/postgres")
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


def dsn(settings: Settings) -> str:
    return settings.effective_database_url.replace("postgresql+asyncpg://", "postgresql://")


def sqlite_path(settings: Settings) -> Path:
    return Path(settings.effective_database_url.removeprefix("sqlite+aiosqlite:///"))


def cpu_s() -> float:
    """CPU seconds of this process (one core's worth of work, whatever else the machine runs)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def machine() -> str:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return (
        f"{platform.node()} · {os.cpu_count()} cores (nproc) · {mem_kb / 1024 / 1024:.0f} GiB · "
        f"CPython {platform.python_version()} · SQLite {sqlite3.sqlite_version} · "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )


def append_section(title: str, lines: list[str]) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([f"### {now} — {title}", "", f"Machine: {machine()}", "", *lines, ""])
    with (ROOT / "docs" / "benchmarks.md").open("a") as fh:
        fh.write("\n" + text)
    print("appended to docs/benchmarks.md")
