"""A revoked API key stops working in every API process (ADR 0014, 0023), on SQLite and
PostgreSQL: two real ``hammerlock serve`` processes on one database, the key used on both (so
both keep its record), then revoked — through one node's API, or by the CLI. The node that
revoked it refuses it at once; the other within its revocation check (1 s by default). The bound
below is ten times that, and far inside the 60 s after which a kept record is read again in
any case, so a check that did not work fails this test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hammerlock.security.keys import parse_key
from tests.servers import Server, cluster, hammerlock_env, last_line, run_cli

pytestmark = pytest.mark.processes

PEPPER = "revocation-test-pepper"
PROBE = "/v1/ledger/accounts/nosuch"  # 404 once the key is let in, 401 when it is not
BOUND_S = 10.0


def _cli(database_url: str, tmp_path: Path, *args: str) -> str:
    done = run_cli(
        list(args), hammerlock_env(tmp_path / "cli", database_url=database_url, pepper=PEPPER)
    )
    assert done.returncode == 0, done.stderr
    return last_line(done.stdout)


@pytest.fixture
def nodes(database_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    with cluster(database_url, tmp_path, 2, pepper=PEPPER) as servers:
        yield servers


async def _status(client: httpx.AsyncClient, server: Server, key: str) -> int:
    r = await client.get(server.base_url + PROBE, headers={"Authorization": f"Bearer {key}"})
    return r.status_code


async def _refused_within(client: httpx.AsyncClient, server: Server, key: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < BOUND_S:
        if await _status(client, server, key) == 401:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"the revoked key still worked on {server.base_url} after {BOUND_S} s")


@pytest.mark.parametrize("revoked_by", ["api", "cli"])
async def test_a_revoked_key_is_refused_by_every_process(
    nodes: list[Server], database_url: str, tmp_path: Path, revoked_by: str
) -> None:
    admin = _cli(database_url, tmp_path, "keys", "create", "--role", "admin", "--name", "admin")
    victim = _cli(database_url, tmp_path, "keys", "create", "--role", "service", "--name", "v")
    parsed = parse_key(victim)
    assert parsed is not None
    async with httpx.AsyncClient(timeout=10.0) as client:
        for server in nodes:  # each node now keeps the key's record
            assert await _status(client, server, victim) == 404
        if revoked_by == "api":
            r = await client.post(
                f"{nodes[0].base_url}/v1/keys/{parsed.key_id}/revoke",
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code == 200, r.text
            assert await _status(client, nodes[0], victim) == 401  # here: at once
        else:
            _cli(database_url, tmp_path, "keys", "revoke", parsed.key_id)
        for server in nodes:
            await _refused_within(client, server, victim)
        for server in nodes:  # and it stays refused
            assert await _status(client, server, victim) == 401
