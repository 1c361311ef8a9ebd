"""``GET /v1/webhook_events``: events newest first with filters and pages, one event with its
delivery attempts, errors. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import random

import httpx
import orjson

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.security.permissions import Role
from hammerlock.webhooks import service
from hammerlock.webhooks.deliverer import WebhookDeliverer
from tests.conftest import Keys

PROBLEM = "application/problem+json"


async def _enqueue(container: Container, event_type: str, n: int) -> list[str]:
    ids = []
    async with container.db.transaction() as uow:
        for i in range(n):
            event = await service.enqueue(
                uow, event_type, {"object": {"id": f"obj_{i}"}}, ts_us=uow.clock.now_us()
            )
            ids.append(event.id)
    return ids


async def test_list_pages_and_filters(
    client: httpx.AsyncClient, keys: Keys, container: Container, clock: FixedClock
) -> None:
    headers = await keys.headers(Role.OPERATOR)
    succeeded = await _enqueue(container, "payment_intent.succeeded", 3)
    clock.advance(1)
    refunds = await _enqueue(container, "refund.created", 2)
    r = await client.get("/v1/webhook_events", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["id"] for e in body["data"]] == [*reversed(refunds), *reversed(succeeded)]
    assert body["next_cursor"] is None
    first = body["data"][0]
    assert first == {
        "id": refunds[-1],
        "type": "refund.created",
        "created": "2026-01-01T00:00:01.000000Z",
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": "2026-01-01T00:00:01.000000Z",
        "finished_at": None,
    }
    seen: list[str] = []
    cursor: str | None = None
    while True:
        url = "/v1/webhook_events?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(url, headers=headers)).json()
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [*reversed(refunds), *reversed(succeeded)]
    only = (await client.get("/v1/webhook_events?type=refund.created", headers=headers)).json()
    assert [e["id"] for e in only["data"]] == list(reversed(refunds))
    none = (await client.get("/v1/webhook_events?status=delivered", headers=headers)).json()
    assert none["data"] == []
    for bad in ("status=lost", "type=Not%20A%20Type", "limit=0", "limit=1001", "cursor=abc"):
        r = await client.get(f"/v1/webhook_events?{bad}", headers=headers)
        assert r.status_code == 422, bad


async def test_one_event_with_its_attempts(
    client: httpx.AsyncClient, keys: Keys, container: Container, clock: FixedClock
) -> None:
    headers = await keys.headers(Role.ADMIN)
    [event_id] = await _enqueue(container, "review.opened", 1)
    # Nobody listens on port 9 (discard): the attempt fails and is recorded.
    deliverer = WebhookDeliverer(
        container.db,
        url="http://127.0.0.1:9/hooks",
        secret=b"0123456789abcdef",
        node="test",
        timeout_s=2,
        rng=random.Random(3),
    )
    try:
        assert await deliverer.run_once() == 1
    finally:
        await deliverer.close()
    r = await client.get(f"/v1/webhook_events/{event_id}", headers=headers)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert detail["status"] == "pending"
    assert detail["attempts"] == 1
    assert detail["payload"] == {
        "id": event_id,
        "type": "review.opened",
        "created": "2026-01-01T00:00:00.000000Z",
        "data": {"object": {"id": "obj_0"}},
    }
    [attempt] = detail["delivery_attempts"]
    assert attempt["attempt"] == 1
    assert attempt["at"] == "2026-01-01T00:00:00.000000Z"
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("ConnectError")
    assert attempt["duration_ms"] >= 0
    assert detail["next_attempt_at"] > "2026-01-01T00:00:14"  # at least half of 30 s later
    async with container.db.transaction(write=False) as uow:
        stored = await service.get_event(uow, event_id)
    assert orjson.loads(stored.event.payload) == detail["payload"]


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient, keys: Keys) -> None:
    headers = await keys.headers(Role.ADMIN)
    r = await client.get("/v1/webhook_events/we_doesnotexist", headers=headers)
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "not_found"
    r = await client.get("/v1/webhook_events/evt_123", headers=headers)
    assert r.status_code == 422
