"""Idempotency across processes (issue 2, item 8), on SQLite and PostgreSQL.

Two real ``hammerlock serve`` processes share one database and one API-key pepper (each with its
own data dir). 50 identical money-moving requests, with one Idempotency-Key, race across both:
exactly one executes (one ``ledger.transfers.create`` audit event, money moved once); every
other answer is 409 ``idempotency_key_in_flight`` or a byte-equal replay of the first answer.

A process that dies mid-request leaves an ``in_flight`` row whose lease lapses; a retry then
executes afresh, and the ledger's own idempotency (transfers by id) keeps it to one effect.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from hammerlock.api.idempotency import fingerprint, idempotency_keys
from hammerlock.audit.model import Context
from hammerlock.audit.storage import audit_log, audit_outbox
from hammerlock.clock import SystemClock
from hammerlock.db.engine import Database, create_database
from hammerlock.ledger import service as ledger_service
from hammerlock.ledger.model import TransferInput
from hammerlock.security.keys import parse_key
from hammerlock.settings import Settings
from tests.servers import Server, cluster, hammerlock_env, last_line, run_cli

pytestmark = pytest.mark.processes

PEPPER = "two-process-test-pepper"
REQUESTS = 50
TRANSFERS = "/v1/ledger/transfers"
TIMEOUT = httpx.Timeout(20.0, connect=5.0)
LIMITS = httpx.Limits(max_connections=REQUESTS * 2, max_keepalive_connections=REQUESTS * 2)
RACE_TIMEOUT_S = 30.0
# The ledger writer waits this long to grow a batch, so the first request holds its lease a
# little longer: the race then yields in-flight answers as well as replays on SQLite too, where
# the database lock otherwise spreads the arrivals out beyond the first request's lifetime.
LINGER_MS = 20


@dataclass
class Deployment:
    servers: list[Server]
    key: str

    @property
    def key_id(self) -> str:
        parsed = parse_key(self.key)
        assert parsed is not None, self.key
        return parsed.key_id

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers


def _deploy(database_url: str, tmp_path: Path, nodes: int) -> Iterator[Deployment]:
    """``nodes`` servers on one database, and an operator key made by ``hammerlock keys create``."""
    with cluster(
        database_url, tmp_path, nodes, pepper=PEPPER, ledger_batch_linger_ms=str(LINGER_MS)
    ) as servers:
        created = run_cli(
            ["keys", "create", "--role", "operator", "--name", "idempotency test"],
            hammerlock_env(tmp_path / "cli", database_url=database_url, pepper=PEPPER),
        )
        assert created.returncode == 0, created.stderr
        yield Deployment(servers=servers, key=last_line(created.stdout))


@pytest.fixture
def two_nodes(database_url: str, tmp_path: Path) -> Iterator[Deployment]:
    yield from _deploy(database_url, tmp_path, 2)


@pytest.fixture
def one_node(database_url: str, tmp_path: Path) -> Iterator[Deployment]:
    yield from _deploy(database_url, tmp_path, 1)


@pytest.fixture
async def db(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = create_database(
        Settings(data_dir=tmp_path / "probe", database_url=database_url), SystemClock()
    )
    try:
        yield database
    finally:
        await database.dispose()


def _transfer_body(transfer_id: str, amount: int) -> bytes:
    return orjson.dumps(
        {
            "transfers": [
                {
                    "id": transfer_id,
                    "debit_account_id": "cash",
                    "credit_account_id": "wallet",
                    "amount": amount,
                    "currency": "USD",
                    "code": "top_up",
                }
            ]
        }
    )


async def _open_accounts(client: httpx.AsyncClient, deployment: Deployment) -> None:
    accounts = [
        {"id": "cash", "currency": "USD", "code": "cash"},
        {"id": "wallet", "currency": "USD", "code": "wallet"},
    ]
    r = await client.post(
        deployment.servers[0].base_url + "/v1/ledger/accounts",
        headers=deployment.headers("open-accounts"),
        content=orjson.dumps({"accounts": accounts}),
    )
    assert r.status_code == 200, r.text
    assert [x["result"] for x in r.json()["results"]] == ["ok", "ok"]


async def _account(
    client: httpx.AsyncClient, deployment: Deployment, account_id: str
) -> dict[str, Any]:
    r = await client.get(
        f"{deployment.servers[-1].base_url}/v1/ledger/accounts/{account_id}",
        headers=deployment.headers(),
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _statement_ids(client: httpx.AsyncClient, deployment: Deployment) -> list[str]:
    r = await client.get(
        f"{deployment.servers[-1].base_url}/v1/ledger/accounts/wallet/transfers",
        headers=deployment.headers(),
    )
    assert r.status_code == 200, r.text
    return [line["id"] for line in r.json()["data"]]


async def _executions(db: Database, transfer_id: str) -> int:
    """How many times a handler ran for ``transfer_id``: one audit event per execution, in the
    outbox or already moved into the log by the servers' sequencer (read in one snapshot)."""
    async with db.snapshot() as uow:
        pending = (
            await uow.conn.execute(
                sa.select(audit_outbox.c.event).where(
                    audit_outbox.c.action == "ledger.transfers.create"
                )
            )
        ).scalars()
        logged = (
            await uow.conn.execute(
                sa.select(audit_log.c.canonical).where(
                    audit_log.c.action == "ledger.transfers.create"
                )
            )
        ).scalars()
        events = [*pending, *logged]
        return sum(1 for e in events if orjson.loads(e)["resource"]["id"] == transfer_id)


async def _warm(client: httpx.AsyncClient, deployment: Deployment) -> None:
    """Open REQUESTS keep-alive connections, half to each server, so the race is not a race
    to connect."""
    urls = [deployment.servers[i % 2].base_url + "/healthz" for i in range(REQUESTS)]
    answers = await asyncio.gather(*(client.get(url) for url in urls))
    assert all(a.status_code == 200 for a in answers)


async def test_fifty_identical_requests_across_two_processes_execute_once(
    two_nodes: Deployment, db: Database
) -> None:
    body = _transfer_body("t-race", 1250)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS) as client:
        await _open_accounts(client, two_nodes)
        await _warm(client, two_nodes)
        barrier = asyncio.Barrier(REQUESTS)

        async def fire(i: int) -> httpx.Response:
            url = two_nodes.servers[i % 2].base_url + TRANSFERS
            await barrier.wait()
            return await client.post(url, headers=two_nodes.headers("race-1"), content=body)

        responses = await asyncio.wait_for(
            asyncio.gather(*(fire(i) for i in range(REQUESTS))), RACE_TIMEOUT_S
        )
        seen = Counter(
            (r.status_code, r.headers.get("idempotent-replayed", "-")) for r in responses
        )
        assert {status for status, _ in seen} <= {200, 409}, (seen, [r.text for r in responses])
        for r in responses:
            if r.status_code == 409:
                assert r.headers["content-type"] == "application/problem+json", r.text
                assert r.json()["code"] == "idempotency_key_in_flight", r.text
        originals = [
            r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers
        ]
        assert len(originals) == 1, seen
        first = originals[0]
        assert first.json() == {"results": [{"id": "t-race", "result": "ok"}]}
        for r in responses:
            if r.status_code == 200 and r is not first:
                assert r.headers["idempotent-replayed"] == "true"
                assert r.content == first.content
                assert r.headers["content-type"] == first.headers["content-type"]

        # Settled: a retry on either process is a byte-equal replay.
        for server in two_nodes.servers:
            again = await client.post(
                server.base_url + TRANSFERS, headers=two_nodes.headers("race-1"), content=body
            )
            assert again.status_code == 200, again.text
            assert again.headers["idempotent-replayed"] == "true"
            assert again.content == first.content

        # The money moved exactly once.
        cash = await _account(client, two_nodes, "cash")
        wallet = await _account(client, two_nodes, "wallet")
        assert (cash["debits_posted"], wallet["credits_posted"]) == (1250, 1250)
        assert await _statement_ids(client, two_nodes) == ["t-race"]

    assert await _executions(db, "t-race") == 1
    t = idempotency_keys
    async with db.transaction(write=False) as uow:
        rows = (await uow.conn.execute(sa.select(t.c.state).where(t.c.key == "race-1"))).all()
    assert [r.state for r in rows] == ["complete"]


async def _plant_lease(
    db: Database, deployment: Deployment, key: str, body: bytes, *, lease_left_us: int
) -> None:
    """The row a process leaves behind when it dies holding ``key``'s lease."""
    scope = deployment.key_id
    now = db.clock.now_us()
    async with db.transaction() as uow:
        await uow.conn.execute(
            idempotency_keys.insert().values(
                scope=scope,
                key=key,
                fingerprint=fingerprint("POST", TRANSFERS, scope, body),
                state="in_flight",
                lease_token="0" * 32,
                lease_expires_us=now + lease_left_us,
                created_us=now - 30_000_000,
                expires_us=now + 86_400_000_000,
            )
        )


async def test_a_lapsed_lease_lets_a_retry_execute_afresh_with_one_effect(
    one_node: Deployment, db: Database
) -> None:
    server = one_node.servers[0]
    live, before_effect, after_effect = (
        _transfer_body("t-live", 100),
        _transfer_body("t-before", 200),
        _transfer_body("t-after", 300),
    )
    await _plant_lease(db, one_node, "k-live", live, lease_left_us=60_000_000)
    await _plant_lease(db, one_node, "k-before", before_effect, lease_left_us=-1_000_000)
    await _plant_lease(db, one_node, "k-after", after_effect, lease_left_us=-1_000_000)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as client:
        await _open_accounts(client, one_node)
        # The dead process of "k-after" had committed its transfer before it died.
        async with db.transaction() as uow:
            done = await ledger_service.post(
                uow,
                [TransferInput("t-after", "cash", "wallet", 300, "USD", "top_up")],
                ctx=Context.system("node that died"),
                public=True,
            )
        assert done == ["ok"]

        held = await client.post(TRANSFERS, headers=one_node.headers("k-live"), content=live)
        assert held.status_code == 409, held.text
        assert held.json()["code"] == "idempotency_key_in_flight"

        for key, body, result in (
            ("k-before", before_effect, "ok"),
            ("k-after", after_effect, "exists"),
        ):
            retry = await client.post(TRANSFERS, headers=one_node.headers(key), content=body)
            assert retry.status_code == 200, retry.text
            assert "idempotent-replayed" not in retry.headers  # executed afresh
            assert retry.json()["results"][0]["result"] == result
            replay = await client.post(TRANSFERS, headers=one_node.headers(key), content=body)
            assert replay.headers.get("idempotent-replayed") == "true", replay.text
            assert replay.content == retry.content

        wallet = await _account(client, one_node, "wallet")
        assert wallet["credits_posted"] == 200 + 300  # t-live never ran; the others once each
        assert sorted(await _statement_ids(client, one_node)) == ["t-after", "t-before"]

    assert await _executions(db, "t-live") == 0
    assert await _executions(db, "t-before") == 1
    assert await _executions(db, "t-after") == 2  # the dead process's run and the retry
