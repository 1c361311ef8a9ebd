"""Idempotency-Key over HTTP (IETF httpapi draft, Stripe's behaviour), on SQLite and PostgreSQL.

The two-process, 50-concurrent-request test lives with the process tests; here: replay, reuse,
scoping, the lease (held, expired), what is and is not stored, and key validation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
import structlog

from hammerlock.api.idempotency import fingerprint, idempotency_keys
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.ledger.errors import LedgerBusy
from hammerlock.logs import configure_logging
from hammerlock.security.permissions import Role
from hammerlock.settings import Settings
from tests.conftest import Keys

PROBLEM = "application/problem+json"
PATH = "/v1/ledger/transfers"
_ids = itertools.count()


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert (body["status"], body["code"]) == (status, code), body
    return body


def body_for(tid: str, amount: int = 100) -> dict[str, Any]:
    return {
        "transfers": [
            {
                "id": tid,
                "debit_account_id": "a",
                "credit_account_id": "b",
                "amount": amount,
                "currency": "USD",
                "code": "test",
            }
        ]
    }


@pytest.fixture
def app_settings(app_settings: Settings) -> Settings:
    """A 1 s lease, so its renewal (every third of it, in real time) can be watched."""
    return app_settings.model_copy(update={"idempotency_lease_s": 1})


@pytest.fixture
async def operator(client: httpx.AsyncClient, keys: Keys) -> dict[str, Any]:
    created = await keys.create(Role.OPERATOR, "staff:ops")
    r = await client.post(
        "/v1/ledger/accounts",
        headers=created["headers"],
        json={
            "accounts": [
                {"id": "a", "currency": "USD", "code": "test"},
                {"id": "b", "currency": "USD", "code": "test"},
            ]
        },
    )
    assert r.status_code == 200
    return created


async def post(
    client: httpx.AsyncClient, auth: dict[str, str], key: str | None, body: Any, **kw: Any
) -> httpx.Response:
    headers = dict(auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(PATH, headers=headers, json=body, **kw)


async def balance(client: httpx.AsyncClient, auth: dict[str, str], account: str = "b") -> int:
    r = await client.get(f"/v1/ledger/accounts/{account}", headers=auth)
    return int(r.json()["credits_posted"])


async def stored(container: Container) -> list[dict[str, Any]]:
    async with container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(sa.select(idempotency_keys))
        return [dict(r) for r in rows.mappings()]


async def test_a_replay_is_byte_equal_and_marked(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    auth = operator["headers"]
    first = await post(client, auth, "replay-1", body_for("t1"))
    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    # Same body, formatted differently (key order, whitespace): still the same request.
    reordered = {"transfers": [dict(reversed(list(body_for("t1")["transfers"][0].items())))]}
    for body in (body_for("t1"), reordered):
        again = await post(client, auth, "replay-1", body)
        assert again.status_code == first.status_code
        assert again.content == first.content
        assert again.headers["content-type"] == first.headers["content-type"]
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["x-request-id"] != first.headers["x-request-id"]
    # Executed once: one transfer's worth of money moved, one audit event.
    assert await balance(client, auth) == 100
    # A new key with the same transfer is a new request: the ledger itself answers `exists`.
    fresh = await post(client, auth, "replay-2", body_for("t1"))
    assert fresh.json() == {"results": [{"id": "t1", "result": "exists"}]}
    assert "idempotent-replayed" not in fresh.headers


async def test_the_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    auth = operator["headers"]
    assert (await post(client, auth, "reuse-1", body_for("t1"))).status_code == 200
    r = await post(client, auth, "reuse-1", body_for("t1", amount=101))
    assert_problem(r, 422, "idempotency_key_reuse")
    assert "idempotent-replayed" not in r.headers
    # Same body on another path with the same key is another request too.
    r = await client.post(
        "/v1/ledger/accounts",
        headers={**auth, "Idempotency-Key": "reuse-1"},
        json={"accounts": [{"id": "c", "currency": "USD", "code": "test"}]},
    )
    assert_problem(r, 422, "idempotency_key_reuse")
    assert await balance(client, auth) == 100


async def test_keys_are_scoped_per_api_key(
    client: httpx.AsyncClient, keys: Keys, operator: dict[str, Any]
) -> None:
    other = await keys.create(Role.OPERATOR, "staff:ops")  # same principal, another key
    service = await keys.create(Role.SERVICE)
    first = await post(client, operator["headers"], "shared", body_for("t1"))
    assert first.json()["results"][0]["result"] == "ok"
    for auth, tid in ((other["headers"], "t2"), (service["headers"], "t3")):
        r = await post(client, auth, "shared", body_for(tid))
        assert r.status_code == 200, r.text
        assert "idempotent-replayed" not in r.headers
        assert r.json() == {"results": [{"id": tid, "result": "ok"}]}
    # And the same body under another API key executes (and the ledger says `exists`).
    r = await post(client, other["headers"], "shared-2", body_for("t1"))
    assert r.json()["results"][0]["result"] == "exists"
    assert await balance(client, operator["headers"]) == 300


async def _hold_lease(container: Container, scope: str, key: str, fp: str, lease_s: int) -> None:
    now = container.clock.now_us()
    async with container.db.transaction() as uow:
        await uow.conn.execute(
            idempotency_keys.insert().values(
                scope=scope,
                key=key,
                fingerprint=fp,
                state="in_flight",
                lease_token="0" * 32,
                lease_expires_us=now + lease_s * 1_000_000,
                created_us=now,
                expires_us=now + 86_400 * 1_000_000,
            )
        )


async def test_a_held_lease_is_409_until_it_expires(
    client: httpx.AsyncClient, container: Container, operator: dict[str, Any], clock: FixedClock
) -> None:
    """As if another process took the key and is still working (or died holding it)."""
    auth, scope = operator["headers"], operator["key"].id
    body = body_for("t1")
    fp = fingerprint("POST", PATH, scope, orjson.dumps(body))
    lease_s = container.settings.idempotency_lease_s
    await _hold_lease(container, scope, "held", fp, lease_s)
    r = await post(client, auth, "held", body)
    assert_problem(r, 409, "idempotency_key_in_flight")
    assert await balance(client, auth) == 0
    # A different body is told about reuse, not about the lease.
    assert_problem(await post(client, auth, "held", body_for("t2")), 422, "idempotency_key_reuse")
    clock.advance(lease_s - 0.001)
    assert_problem(await post(client, auth, "held", body), 409, "idempotency_key_in_flight")
    # The holder died: once its lease lapses, a retry executes afresh, and is stored.
    clock.advance(0.001)
    r = await post(client, auth, "held", body)
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [{"id": "t1", "result": "ok"}]}
    assert "idempotent-replayed" not in r.headers
    assert await balance(client, auth) == 100
    again = await post(client, auth, "held", body)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == r.content


async def test_a_concurrent_retry_while_the_handler_runs_is_409(
    client: httpx.AsyncClient,
    container: Container,
    operator: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = operator["headers"]
    entered, release = asyncio.Event(), asyncio.Event()
    real_submit = container.ledger_writer.submit
    calls = 0

    async def slow_submit(request: Any) -> list[str]:
        nonlocal calls
        calls += 1
        entered.set()
        await release.wait()
        return await real_submit(request)

    monkeypatch.setattr(container.ledger_writer, "submit", slow_submit)
    first = asyncio.create_task(post(client, auth, "busy", body_for("t1")))
    await asyncio.wait_for(entered.wait(), 10)
    r = await post(client, auth, "busy", body_for("t1"))
    assert_problem(r, 409, "idempotency_key_in_flight")
    release.set()
    done = await asyncio.wait_for(first, 10)
    assert done.status_code == 200
    replay = await post(client, auth, "busy", body_for("t1"))
    assert replay.content == done.content
    assert replay.headers["idempotent-replayed"] == "true"
    assert calls == 1


async def test_the_lease_is_renewed_while_the_handler_runs(
    client: httpx.AsyncClient,
    container: Container,
    operator: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    clock: FixedClock,
) -> None:
    """A slow request keeps its key: a retry after the first lease term is still 409, and does
    not run the handler a second time."""
    auth = operator["headers"]
    lease_us = container.settings.idempotency_lease_s * 1_000_000
    release = asyncio.Event()
    real_submit = container.ledger_writer.submit
    calls = 0

    async def first_call_blocks(request: Any) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
        return await real_submit(request)

    monkeypatch.setattr(container.ledger_writer, "submit", first_call_blocks)
    first = asyncio.create_task(post(client, auth, "slow", body_for("t1")))
    for _ in range(200):
        rows = await stored(container)
        if rows and calls:
            break
        await asyncio.sleep(0.01)
    [row] = rows
    taken_until = row["lease_expires_us"]
    clock.advance(0.9 * lease_us / 1_000_000)
    for _ in range(500):  # the renewer runs about every lease/3 of real time
        [row] = await stored(container)
        if row["lease_expires_us"] > taken_until:
            break
        await asyncio.sleep(0.01)
    assert row["lease_expires_us"] == clock.now_us() + lease_us
    clock.advance(0.5 * lease_us / 1_000_000)  # past the first term, within the renewed one
    assert clock.now_us() > taken_until
    assert_problem(
        await post(client, auth, "slow", body_for("t1")), 409, "idempotency_key_in_flight"
    )
    assert calls == 1
    release.set()
    done = await asyncio.wait_for(first, 10)
    assert done.json() == {"results": [{"id": "t1", "result": "ok"}]}
    [row] = await stored(container)
    assert (row["state"], row["lease_token"]) == ("complete", None)


async def test_a_validation_error_is_not_stored(
    client: httpx.AsyncClient, container: Container, operator: dict[str, Any]
) -> None:
    auth = operator["headers"]
    bad = body_for("t1")
    bad["transfers"][0]["amount"] = -5
    assert_problem(await post(client, auth, "fix-me", bad), 422, "validation_error")
    bad["transfers"][0]["colour"] = "red"
    assert_problem(await post(client, auth, "fix-me", bad), 422, "validation_error")
    assert await stored(container) == []
    # The corrected retry, with the same key, runs.
    r = await post(client, auth, "fix-me", body_for("t1"))
    assert r.status_code == 200, r.text
    assert "idempotent-replayed" not in r.headers
    assert await balance(client, auth) == 100


async def test_a_domain_error_is_stored_and_replayed(
    client: httpx.AsyncClient, container: Container, operator: dict[str, Any]
) -> None:
    """The handler decided (404): a retry gets the same answer, even once the account exists."""
    auth = operator["headers"]
    url = "/v1/ledger/accounts/later/close"
    r = await client.post(url, headers={**auth, "Idempotency-Key": "close-1"})
    assert_problem(r, 404, "account_not_found")
    r2 = await client.post(
        "/v1/ledger/accounts",
        headers=auth,
        json={"accounts": [{"id": "later", "currency": "USD", "code": "test"}]},
    )
    assert r2.status_code == 200
    again = await client.post(url, headers={**auth, "Idempotency-Key": "close-1"})
    assert again.status_code == 404
    assert again.content == r.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == PROBLEM
    [row] = [s for s in await stored(container) if s["key"] == "close-1"]
    assert (row["state"], row["status_code"]) == ("complete", 404)


async def test_a_server_error_is_not_stored(
    client: httpx.AsyncClient,
    container: Container,
    operator: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = operator["headers"]
    real_submit = container.ledger_writer.submit

    async def busy(_request: Any) -> list[str]:
        raise LedgerBusy("queue full")

    monkeypatch.setattr(container.ledger_writer, "submit", busy)
    assert_problem(await post(client, auth, "retry-me", body_for("t1")), 503, "ledger_busy")
    assert await stored(container) == []
    monkeypatch.setattr(container.ledger_writer, "submit", real_submit)
    r = await post(client, auth, "retry-me", body_for("t1"))
    assert r.status_code == 200
    assert "idempotent-replayed" not in r.headers
    assert await balance(client, auth) == 100


@pytest.fixture
def json_logging() -> Iterator[None]:
    """Plain JSON logs: structlog's unconfigured default renders tracebacks with every local
    (seconds per error, and request headers included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("critical", "json")
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level
    logging.getLogger("uvicorn.access").disabled = False


@pytest.mark.usefixtures("json_logging")
async def test_an_unexpected_error_releases_the_key(
    client: httpx.AsyncClient,
    container: Container,
    operator: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = operator["headers"]
    real_submit = container.ledger_writer.submit

    async def crash(_request: Any) -> list[str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(container.ledger_writer, "submit", crash)
    assert_problem(await post(client, auth, "crash", body_for("t1")), 500, "internal_error")
    assert await stored(container) == []
    monkeypatch.setattr(container.ledger_writer, "submit", real_submit)
    assert (await post(client, auth, "crash", body_for("t1"))).status_code == 200


async def test_a_stored_answer_expires_after_the_ttl(
    client: httpx.AsyncClient, container: Container, operator: dict[str, Any], clock: FixedClock
) -> None:
    auth = operator["headers"]
    first = await post(client, auth, "ttl", body_for("t1"))
    clock.advance(container.settings.idempotency_ttl_s - 1)
    assert (await post(client, auth, "ttl", body_for("t1"))).headers[
        "idempotent-replayed"
    ] == "true"
    clock.advance(1)
    fresh = await post(client, auth, "ttl", body_for("t1", amount=5))  # the key is new again
    assert fresh.status_code == 200
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json() == {"results": [{"id": "t1", "result": "exists_with_different_amount"}]}
    assert first.json() == {"results": [{"id": "t1", "result": "ok"}]}


@pytest.mark.parametrize(
    "key",
    [
        "k" * 256,
        "",
        "tab\there",
        "bell\x07",
        "del\x7f",
        "caf\xe9",
    ],
)
async def test_an_invalid_key_is_400(
    client: httpx.AsyncClient, container: Container, operator: dict[str, Any], key: str
) -> None:
    auth = operator["headers"]
    headers = [*auth.items(), ("Idempotency-Key", key.encode("latin-1"))]
    r = await client.post(PATH, headers=headers, json=body_for("t1"))
    assert_problem(r, 400, "idempotency_key_invalid")
    assert await balance(client, auth) == 0
    assert await stored(container) == []


@pytest.mark.parametrize(
    "key", ["k" * 255, "a", "550e8400-e29b-41d4-a716-446655440000", "order 17/2~!"]
)
async def test_valid_keys_are_accepted(
    client: httpx.AsyncClient, operator: dict[str, Any], key: str
) -> None:
    r = await post(client, operator["headers"], key, body_for("t1"))
    assert r.status_code == 200, r.text
    again = await post(client, operator["headers"], key, body_for("t1"))
    assert again.headers["idempotent-replayed"] == "true"


async def test_a_non_money_post_takes_an_optional_key(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    admin = await keys.headers(Role.ADMIN)
    body = {"role": "bidder", "name": "once"}
    r1 = await client.post("/v1/keys", headers={**admin, "Idempotency-Key": "mint"}, json=body)
    r2 = await client.post("/v1/keys", headers={**admin, "Idempotency-Key": "mint"}, json=body)
    assert r1.status_code == 201
    assert r2.content == r1.content  # the same key, secret included, not a second key
    assert r2.headers["idempotent-replayed"] == "true"
    listed = (await client.get("/v1/keys", headers=admin)).json()["data"]
    assert [k["name"] for k in listed].count("once") == 1
