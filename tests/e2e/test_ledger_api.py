"""The ledger's HTTP API: shapes, statements, closing, reserved accounts, per-item results.

Runs on SQLite and PostgreSQL (the ``client`` fixture is parametrised by backend).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.ledger import service as ledger_service
from hammerlock.ledger.model import (
    RESERVED_PREFIXES,
    AccountFlag,
    AccountInput,
    TransferFlag,
    TransferInput,
)
from hammerlock.security.permissions import Role
from tests.conftest import Keys

PROBLEM = "application/problem+json"
_keys = itertools.count()

ACCOUNT_FIELDS = {
    "id", "currency", "code", "flags", "metadata",
    "debits_pending", "debits_posted", "credits_pending", "credits_posted",
}  # fmt: skip
TRANSFER_FIELDS = {
    "id", "debit_account_id", "credit_account_id", "amount", "currency", "code", "flags",
    "pending_id", "timeout_s", "metadata", "timestamp", "expires_at",
}  # fmt: skip
BALANCE_FIELDS = {"debits_pending", "debits_posted", "credits_pending", "credits_posted"}


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert (body["status"], body["code"]) == (status, code), body
    return body


def tr(tid: str, dr: str, cr: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "debit_account_id": dr,
        "credit_account_id": cr,
        "amount": amount,
        "currency": extra.pop("currency", "USD"),
        "code": extra.pop("code", "test"),
        **extra,
    }


class Ledger:
    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers

    async def accounts(self, *accounts: dict[str, Any]) -> list[str]:
        r = await self.client.post(
            "/v1/ledger/accounts", headers=self.headers, json={"accounts": list(accounts)}
        )
        assert r.status_code == 200, r.text
        return [x["result"] for x in r.json()["results"]]

    async def transfers(self, *transfers: dict[str, Any]) -> list[str]:
        r = await self.post_transfers(list(transfers))
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["id"] for x in results] == [t["id"] for t in transfers]
        return [x["result"] for x in results]

    async def post_transfers(self, transfers: list[dict[str, Any]]) -> httpx.Response:
        headers = {**self.headers, "Idempotency-Key": f"ledger-test-{next(_keys)}"}
        return await self.client.post(
            "/v1/ledger/transfers", headers=headers, json={"transfers": transfers}
        )

    async def account(self, account_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/ledger/accounts/{account_id}", headers=self.headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture
async def ledger(client: httpx.AsyncClient, keys: Keys) -> Ledger:
    return Ledger(client, await keys.headers(Role.OPERATOR))


def usd(account_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": account_id, "currency": "USD", "code": "test", **extra}


async def test_account_shapes(ledger: Ledger, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/ledger/accounts",
        headers=ledger.headers,
        json={
            "accounts": [
                usd("cash", code="asset.cash"),
                usd(
                    "wallet:1",
                    flags=["debits_must_not_exceed_credits"],
                    metadata={"b": 1, "a": [True, None]},
                ),
            ]
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "results": [{"id": "cash", "result": "ok"}, {"id": "wallet:1", "result": "ok"}]
    }
    wallet = await ledger.account("wallet:1")
    assert set(wallet) == ACCOUNT_FIELDS
    assert wallet == {
        "id": "wallet:1",
        "currency": "USD",
        "code": "test",
        "flags": ["debits_must_not_exceed_credits"],
        "metadata": {"a": [True, None], "b": 1},
        "debits_pending": 0,
        "debits_posted": 0,
        "credits_pending": 0,
        "credits_posted": 0,
    }
    assert (await ledger.account("cash"))["code"] == "asset.cash"


async def test_account_results_for_existing_ids(ledger: Ledger) -> None:
    assert await ledger.accounts(usd("x", metadata={"k": 1})) == ["ok"]
    assert await ledger.accounts(
        usd("x", metadata={"k": 1}),
        {"id": "x", "currency": "EUR", "code": "test", "metadata": {"k": 1}},
        usd("x", code="other", metadata={"k": 1}),
        usd("x", flags=["credits_must_not_exceed_debits"], metadata={"k": 1}),
        usd("x", metadata={"k": 2}),
        usd("y"),
        usd("y"),
    ) == [
        "exists",
        "exists_with_different_currency",
        "exists_with_different_code",
        "exists_with_different_flags",
        "exists_with_different_metadata",
        "ok",
        "exists",
    ]
    assert (await ledger.account("x"))["currency"] == "USD"


async def test_concurrent_creation_of_one_account_is_one_ok_and_no_error(ledger: Ledger) -> None:
    body = {"accounts": [usd("race")]}
    for _ in range(3):
        responses = await asyncio.gather(
            *(
                ledger.client.post("/v1/ledger/accounts", headers=ledger.headers, json=body)
                for _ in range(8)
            )
        )
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
        results = sorted(r.json()["results"][0]["result"] for r in responses)
        assert results in (["exists"] * 8, ["exists"] * 7 + ["ok"])
    assert (await ledger.account("race"))["id"] == "race"


async def test_transfer_shapes_and_balances(ledger: Ledger, client: httpx.AsyncClient) -> None:
    await ledger.accounts(usd("a"), usd("b"))
    assert await ledger.transfers(
        tr("t1", "a", "b", 1250, code="top_up", metadata={"order": "o-9"})
    ) == ["ok"]
    r = await client.get("/v1/ledger/transfers/t1", headers=ledger.headers)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == TRANSFER_FIELDS
    assert body == {
        "id": "t1",
        "debit_account_id": "a",
        "credit_account_id": "b",
        "amount": 1250,
        "currency": "USD",
        "code": "top_up",
        "flags": [],
        "pending_id": None,
        "timeout_s": 0,
        "metadata": {"order": "o-9"},
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "expires_at": None,
    }
    a, b = await ledger.account("a"), await ledger.account("b")
    assert (a["debits_posted"], a["credits_posted"]) == (1250, 0)
    assert (b["debits_posted"], b["credits_posted"]) == (0, 1250)


async def test_results_are_per_item_in_request_order(ledger: Ledger) -> None:
    await ledger.accounts(usd("a"), usd("b"), {"id": "e", "currency": "EUR", "code": "test"})
    await ledger.accounts(usd("lim", flags=["debits_must_not_exceed_credits"]))
    results = await ledger.transfers(
        tr("r1", "a", "b", 10),
        tr("r2", "nope", "b", 10),
        tr("r3", "a", "nope", 10),
        tr("r1", "a", "b", 10),
        tr("r1", "a", "b", 11),
        tr("r4", "a", "a", 10),
        tr("r5", "a", "b", 0),
        tr("r6", "a", "e", 10),
        tr("r7", "lim", "b", 1),
        tr("r8", "b", "a", 3),
        tr("r9", "a", "b", 5, timeout_s=5),
        tr("r10", "a", "b", 5, flags=["pending", "post_pending"], pending_id="r1"),
    )
    assert results == [
        "ok",
        "debit_account_not_found",
        "credit_account_not_found",
        "exists",
        "exists_with_different_amount",
        "accounts_must_be_different",
        "amount_must_not_be_zero",
        "currency_mismatch",
        "exceeds_credits",
        "ok",
        "timeout_reserved_for_pending_transfer",
        "flags_are_mutually_exclusive",
    ]
    a = await ledger.account("a")
    assert (a["debits_posted"], a["credits_posted"]) == (10, 3)


async def test_linked_chain_fails_as_a_whole(ledger: Ledger) -> None:
    await ledger.accounts(usd("a"), usd("b"))
    results = await ledger.transfers(
        tr("l1", "a", "b", 10, flags=["linked"]),
        tr("l2", "a", "nope", 10),
        tr("l3", "a", "b", 1),
    )
    assert results == ["linked_event_failed", "credit_account_not_found", "ok"]
    assert (await ledger.account("a"))["debits_posted"] == 1


async def test_holds_post_and_void(ledger: Ledger, client: httpx.AsyncClient) -> None:
    await ledger.accounts(usd("a"), usd("b"))
    assert await ledger.transfers(
        tr("h1", "a", "b", 100, flags=["pending"], timeout_s=60),
        tr("h2", "a", "b", 50, flags=["pending"]),
    ) == ["ok", "ok"]
    hold = (await client.get("/v1/ledger/transfers/h1", headers=ledger.headers)).json()
    assert hold["expires_at"] == "2026-01-01T00:01:00.000000Z"
    assert hold["flags"] == ["pending"]
    a = await ledger.account("a")
    assert (a["debits_pending"], a["debits_posted"]) == (150, 0)
    assert await ledger.transfers(
        {"id": "p1", "pending_id": "h1", "amount": 60, "flags": ["post_pending"]},
        {"id": "v1", "pending_id": "h2", "flags": ["void_pending"]},
        {"id": "p2", "pending_id": "h1", "flags": ["post_pending"]},
    ) == ["ok", "ok", "pending_transfer_already_posted"]
    a = await ledger.account("a")
    assert (a["debits_pending"], a["debits_posted"]) == (0, 60)
    posted = (await client.get("/v1/ledger/transfers/p1", headers=ledger.headers)).json()
    assert (posted["amount"], posted["pending_id"], posted["debit_account_id"]) == (60, "h1", "a")


async def test_statement_with_balance_after_and_cursor_pagination(
    ledger: Ledger, client: httpx.AsyncClient, clock: FixedClock
) -> None:
    await ledger.accounts(usd("a"), usd("b"), usd("c"))
    await ledger.transfers(tr("s1", "a", "b", 100))
    clock.advance(1)
    await ledger.transfers(tr("s2", "b", "a", 30), tr("s3", "a", "c", 7))
    clock.advance(1)
    await ledger.transfers(tr("s4", "c", "b", 1), tr("s5", "a", "b", 2, flags=["pending"]))
    await ledger.transfers(tr("s6", "a", "b", 4))
    lines: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        r = await client.get(
            "/v1/ledger/accounts/a/transfers", headers=ledger.headers, params=params
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"data", "next_cursor"}
        assert len(page["data"]) <= 2
        lines += page["data"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert pages == 3
    assert [line["id"] for line in lines] == ["s1", "s2", "s3", "s5", "s6"]
    for line in lines:
        assert set(line) == TRANSFER_FIELDS | {"balance_after"}
        assert set(line["balance_after"]) == BALANCE_FIELDS
    assert [line["balance_after"] for line in lines] == [
        {"debits_posted": 100, "credits_posted": 0, "debits_pending": 0, "credits_pending": 0},
        {"debits_posted": 100, "credits_posted": 30, "debits_pending": 0, "credits_pending": 0},
        {"debits_posted": 107, "credits_posted": 30, "debits_pending": 0, "credits_pending": 0},
        {"debits_posted": 107, "credits_posted": 30, "debits_pending": 2, "credits_pending": 0},
        {"debits_posted": 111, "credits_posted": 30, "debits_pending": 2, "credits_pending": 0},
    ]
    assert lines[0]["timestamp"] == "2026-01-01T00:00:00.000000Z"
    assert lines[1]["timestamp"] == "2026-01-01T00:00:01.000000Z"
    # The credit side sees its own balances.
    b_lines = (await client.get("/v1/ledger/accounts/b/transfers", headers=ledger.headers)).json()
    assert b_lines["next_cursor"] is None
    assert [line["balance_after"]["credits_posted"] for line in b_lines["data"]] == [
        100, 100, 101, 101, 105,
    ]  # fmt: skip
    # The whole statement in one page when the limit allows.
    one = (
        await client.get("/v1/ledger/accounts/a/transfers?limit=1000", headers=ledger.headers)
    ).json()
    assert one["data"] == lines
    assert one["next_cursor"] is None
    # An account without transfers has an empty statement.
    empty = (
        await client.get("/v1/ledger/accounts/c/transfers?cursor=999999", headers=ledger.headers)
    ).json()
    assert empty == {"data": [], "next_cursor": None}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "x"])
async def test_statement_limit_bounds(
    ledger: Ledger, client: httpx.AsyncClient, limit: str
) -> None:
    await ledger.accounts(usd("a"))
    r = await client.get(f"/v1/ledger/accounts/a/transfers?limit={limit}", headers=ledger.headers)
    assert_problem(r, 422, "validation_error")


async def test_closing_an_account(
    ledger: Ledger, client: httpx.AsyncClient, container: Container
) -> None:
    await ledger.accounts(usd("a"), usd("b"), usd("c"))
    await ledger.transfers(tr("h", "a", "b", 5, flags=["pending"]))
    r = await client.post("/v1/ledger/accounts/b/close", headers=ledger.headers)
    assert r.status_code == 200, r.text
    closed = r.json()
    assert set(closed) == ACCOUNT_FIELDS
    assert closed["flags"] == ["closed"]
    assert closed["credits_pending"] == 5
    assert (await ledger.account("b"))["flags"] == ["closed"]
    assert await ledger.transfers(
        tr("x1", "a", "b", 1),
        tr("x2", "b", "c", 1),
        tr("x3", "a", "c", 1),
        {"id": "x4", "pending_id": "h", "flags": ["post_pending"]},
        {"id": "x5", "pending_id": "h", "flags": ["void_pending"]},
    ) == ["credit_account_closed", "debit_account_closed", "ok", "credit_account_closed", "ok"]
    # Closing again is harmless; the event says so.
    r = await client.post("/v1/ledger/accounts/b/close", headers=ledger.headers)
    assert r.status_code == 200
    assert r.json()["flags"] == ["closed"]
    async with container.db.transaction(write=False) as uow:
        events = (
            (
                await uow.conn.execute(
                    sa.text("SELECT event FROM audit_outbox WHERE action = 'ledger.accounts.close'")
                )
            )
            .scalars()
            .all()
        )
    assert len(events) == 2
    assert '"already_closed":false' in events[0]
    assert '"already_closed":true' in events[1]
    # A closed account can still be created-again idempotently only with its original flags.
    assert await ledger.accounts(usd("b")) == ["exists_with_different_flags"]


@pytest.mark.parametrize("prefix", RESERVED_PREFIXES)
async def test_reserved_accounts_cannot_be_created_over_the_api(
    ledger: Ledger, prefix: str
) -> None:
    assert await ledger.accounts(usd(f"{prefix}x:USD"), usd("plain")) == ["account_reserved", "ok"]
    r = await ledger.client.get(f"/v1/ledger/accounts/{prefix}x:USD", headers=ledger.headers)
    assert_problem(r, 404, "account_not_found")


async def test_reserved_accounts_do_not_move_over_the_api(
    ledger: Ledger, client: httpx.AsyncClient, container: Container
) -> None:
    domain = [
        AccountInput(f"{p}o1", "USD", "test", AccountFlag(0), "{}") for p in RESERVED_PREFIXES
    ]
    async with container.db.transaction() as uow:
        created = await ledger_service.create_accounts(uow, None, domain, public=False)
    assert [c.result for c in created] == ["ok"] * len(RESERVED_PREFIXES)
    await ledger.accounts(usd("plain"))
    transfers = []
    for i, p in enumerate(RESERVED_PREFIXES):
        transfers += [tr(f"d{i}", f"{p}o1", "plain", 1), tr(f"c{i}", "plain", f"{p}o1", 1)]
    assert await ledger.transfers(*transfers) == ["account_reserved"] * len(transfers)
    # Nor can a hold on one be resolved, nor can one be closed.
    async with container.db.transaction() as uow:
        held = await ledger_service.post(
            uow,
            [TransferInput("dh", "escrow:o1", "plain", 5, "USD", "test", TransferFlag.PENDING)],
        )
    assert held == ["ok"]
    assert await ledger.transfers({"id": "dv", "pending_id": "dh", "flags": ["void_pending"]}) == [
        "account_reserved"
    ]
    r = await client.post("/v1/ledger/accounts/escrow:o1/close", headers=ledger.headers)
    assert_problem(r, 403, "account_reserved")
    plain = await ledger.account("plain")
    assert (plain["debits_posted"], plain["credits_posted"], plain["credits_pending"]) == (0, 0, 5)


async def test_unknown_objects_are_404_problems(ledger: Ledger, client: httpx.AsyncClient) -> None:
    h = ledger.headers
    assert_problem(
        await client.get("/v1/ledger/accounts/ghost", headers=h), 404, "account_not_found"
    )
    assert_problem(
        await client.get("/v1/ledger/accounts/ghost/transfers", headers=h), 404, "account_not_found"
    )
    assert_problem(
        await client.post("/v1/ledger/accounts/ghost/close", headers=h), 404, "account_not_found"
    )
    assert_problem(
        await client.get("/v1/ledger/transfers/ghost", headers=h), 404, "transfer_not_found"
    )


async def test_transfers_require_an_idempotency_key(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await ledger.accounts(usd("a"), usd("b"))
    r = await client.post(
        "/v1/ledger/transfers", headers=ledger.headers, json={"transfers": [tr("k1", "a", "b", 1)]}
    )
    body = assert_problem(r, 400, "idempotency_key_required")
    assert "Idempotency-Key" in body["detail"]
    assert_problem(
        await client.get("/v1/ledger/transfers/k1", headers=ledger.headers),
        404,
        "transfer_not_found",
    )
    # Account creation and closing do not move money: the key is optional there.
    r = await client.post(
        "/v1/ledger/accounts", headers=ledger.headers, json={"accounts": [usd("z")]}
    )
    assert r.status_code == 200


async def test_ledger_writes_are_audited_once_per_request(
    ledger: Ledger, container: Container
) -> None:
    await ledger.accounts(usd("a"), usd("b"))
    await ledger.transfers(*(tr(f"t{i}", "a", "b", 1) for i in range(5)))
    async with container.db.transaction(write=False) as uow:
        actions = (
            (await uow.conn.execute(sa.text("SELECT action FROM audit_outbox ORDER BY id")))
            .scalars()
            .all()
        )
    assert actions.count("ledger.accounts.create") == 1
    assert actions.count("ledger.transfers.create") == 1
