"""Shared fixtures: one suite, parametrised over SQLite and PostgreSQL.

Services: a test that needs PostgreSQL (Redis, NATS) runs when it answers, is skipped with the
reason when it does not, and fails instead when ``REQUIRE_SERVICES=1`` (CI sets it).

Isolation: each test gets its own SQLite file (copied from a migrated template) or its own
PostgreSQL database (``CREATE DATABASE … TEMPLATE`` of a migrated template), so tests can run
in parallel under pytest-xdist and never see each other's rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, settings

from hammerlock.api.app import create_app
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.engine import create_database
from hammerlock.db.migrate import migrate
from hammerlock.logs import configure_logging
from hammerlock.security import service as keys_service
from hammerlock.security.permissions import Role
from hammerlock.settings import Settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile(
    "long", max_examples=2_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# As the entry points do: JSON lines with redaction. structlog's unconfigured default renders
# tracebacks with every local variable (an Authorization header included) and is slow.
configure_logging("warning", "json")

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
PG_URL = os.environ.get(
    "HAMMERLOCK_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
_counter = itertools.count()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if _port_open(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def _pg_dsn(database: str | None = None) -> str:
    dsn = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    if database is None:
        return dsn
    return dsn.rsplit("/", 1)[0] + "/" + database


def pg_url(database: str) -> str:
    return PG_URL.rsplit("/", 1)[0] + "/" + database


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even under a running loop (own thread)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_pg_dsn(), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate_url(url: str, data_dir: Path) -> None:
    db = create_database(Settings(data_dir=data_dir, database_url=url), FixedClock())
    try:
        await migrate(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sqlite-template")
    path = directory / "hammerlock.db"
    run_sync(_migrate_url(f"sqlite+aiosqlite:///{path}", directory))
    return path


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"hl_tpl_{_worker()}_{os.getpid()}"

    async def create() -> None:
        await _admin(f'DROP DATABASE IF EXISTS "{name}"')
        await _admin(f'CREATE DATABASE "{name}"')
        await _migrate_url(pg_url(name), tmp_path_factory.mktemp("pg-template"))

    run_sync(create())
    yield name
    run_sync(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_service("PostgreSQL", "127.0.0.1", 5432)
    return str(request.param)


@pytest.fixture
async def database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "hammerlock.db"
        shutil.copy(template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    template_name: str = request.getfixturevalue("pg_template")
    name = f"hl_{_worker()}_{os.getpid()}_{next(_counter)}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    yield pg_url(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def app_settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        api_key_pepper="test-pepper-not-secret",  # type: ignore[arg-type]
        db_pool_size=5,
    )


@pytest.fixture
async def container(app_settings: Settings, clock: FixedClock) -> AsyncIterator[Container]:
    c = Container(app_settings, clock=clock, background=False)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(container)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


class Keys:
    """Creates API keys per role for a test and returns ready-to-use headers."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.by_role: dict[str, dict[str, str]] = {}

    async def create(self, role: Role, principal_id: str | None = None) -> dict[str, Any]:
        async with self.container.db.transaction() as uow:
            created = await keys_service.create_key(
                uow,
                Context.system("tests"),
                pepper=self.container.pepper,
                role=role,
                name=f"test {role.value}",
                principal_id=principal_id,
            )
        return {
            "headers": {"Authorization": f"Bearer {created.plaintext}"},
            "key": created.key,
            "plaintext": created.plaintext,
        }

    async def headers(self, role: Role) -> dict[str, str]:
        if role.value not in self.by_role:
            self.by_role[role.value] = (await self.create(role))["headers"]
        return self.by_role[role.value]


@pytest.fixture
def keys(container: Container) -> Keys:
    return Keys(container)
