"""The vault's audit events reach the API's audit trail once each, with a durable cursor."""

from __future__ import annotations

import asyncio
import re

import orjson
import sqlalchemy as sa

from hammerlock.audit.model import AuditEvent, Context
from hammerlock.audit.service import canonical_bytes
from hammerlock.bootstrap import Container
from hammerlock.vault import service as vault_service
from hammerlock.vault.puller import AuditPuller
from hammerlock.vault.wire import event_from_json, event_to_json
from tests.vault.conftest import VISA, Vault


async def _outbox(container: Container) -> list[tuple[str, str]]:
    async with container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(sa.text("SELECT event_id, action FROM audit_outbox"))
        return [(r.event_id, r.action) for r in rows]


async def _vault_events(container: Container) -> list[str]:
    return [eid for eid, action in await _outbox(container) if action.startswith("vault.")]


async def test_events_are_pulled_once_and_the_cursor_survives(
    vault: Vault, container: Container
) -> None:
    for _ in range(3):
        await vault.tokenize(VISA)
    refused = await vault.browser.post(
        "/v1/tokens", json={"number": "4242424242424241", "exp_month": 12, "exp_year": 2034}
    )
    assert refused.status_code == 422
    puller = AuditPuller(container.db, vault.client, page_size=2)
    pulled = 0
    while count := await puller.run_once():
        pulled += count
    assert pulled == 4
    assert await puller.cursor() == 4
    ids = await _vault_events(container)
    assert len(ids) == len(set(ids)) == 4
    # A new puller (a restarted API) starts from the stored cursor: nothing new, nothing twice.
    assert await AuditPuller(container.db, vault.client).run_once() == 0
    await vault.tokenize(VISA)
    assert await AuditPuller(container.db, vault.client).run_once() == 1
    assert len(await _vault_events(container)) == 5


async def test_a_lost_cursor_never_duplicates_events(vault: Vault, container: Container) -> None:
    """Were the cursor reset (restored backup, operator error), event ids deduplicate."""
    for _ in range(3):
        await vault.tokenize(VISA)
    puller = AuditPuller(container.db, vault.client)
    assert await puller.run_once() == 3
    async with container.db.transaction() as uow:
        await uow.conn.execute(
            sa.text("UPDATE audit_state SET position = 0 WHERE name = :n"), {"n": puller.state}
        )
    assert await puller.run_once() == 3  # fetched again ...
    assert len(await _vault_events(container)) == 3  # ... inserted once
    assert await puller.cursor() == 3


async def test_concurrent_pullers_insert_each_event_once(
    vault: Vault, container: Container
) -> None:
    for _ in range(5):
        await vault.tokenize(VISA)
    pullers = [AuditPuller(container.db, vault.client, page_size=2) for _ in range(3)]

    async def drain(puller: AuditPuller) -> list[object]:
        return [
            (await asyncio.gather(puller.run_once(), return_exceptions=True))[0] for _ in range(10)
        ]

    outcomes = [o for os_ in await asyncio.gather(*(drain(p) for p in pullers)) for o in os_]
    errors = {type(o).__name__ for o in outcomes if isinstance(o, BaseException)}
    assert errors <= {"_LostRace"}  # a lost race rolls back; the next run goes on
    ids = await _vault_events(container)
    assert len(ids) == len(set(ids)) == 5


async def test_the_event_hashes_the_same_on_both_sides(vault: Vault) -> None:
    await vault.tokenize(VISA, cvc="123")
    events, _ = await vault.client.audit_events(after=0, limit=10)
    (event,) = events
    assert event.action == "vault.tokenize"
    assert event.actor.role == "public"
    assert event.details["last4"] == "4242"
    assert event.details["cvc_held"] is True
    assert canonical_bytes(event_from_json(event_to_json(event))) == canonical_bytes(event)
    assert VISA.encode() not in canonical_bytes(event)
    # The CVC appears nowhere, except by chance inside a hex digest or a random id.
    for text in _strings(orjson.loads(canonical_bytes(event))):
        assert "123" not in text or re.fullmatch(r"[0-9a-f]{16,}|[a-z]+_[A-Za-z0-9_-]{16,}", text)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in _strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


async def test_the_container_wires_the_vault_and_runs_the_puller(
    vault: Vault, container: Container
) -> None:
    """With HAMMERLOCK_VAULT_URL set, the API's container builds the client, the gateways and
    the puller (here: the puller pointed at the in-process vault)."""
    settings = container.settings.model_copy(update={"vault_url": "http://vault.test"})
    wired = Container(settings, clock=vault.clock, background=False)
    try:
        assert wired.vault is not None
        assert set(wired.gateways) == {"sandbox"}
        assert wired.vault_audit is not None
    finally:
        await wired.stop()
    await vault.tokenize(VISA)
    stop = asyncio.Event()
    task = asyncio.create_task(
        AuditPuller(container.db, vault.client, interval_s=0.01).run_forever(stop)
    )
    for _ in range(200):
        if await _vault_events(container):
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(await _vault_events(container)) == 1


async def test_an_event_committed_late_is_never_stepped_over(
    vault: Vault, container: Container
) -> None:
    """Two recording transactions: the one that took its outbox id first commits last. The
    puller's cursor (the highest id seen) must not pass the late one's id while it is open."""

    def event(name: str) -> AuditEvent:
        return Context.system("t").event(
            "vault.detokenize", resource_type="card_token", resource_id=name, ts_us=1, details={}
        )

    puller = AuditPuller(container.db, vault.client)
    db = vault.container.db
    fast_done = asyncio.Event()

    async def fast() -> None:
        async with db.transaction() as uow:
            await vault_service.record(uow, event("tok_fast"))
        fast_done.set()

    async with db.transaction() as slow:
        await vault_service.record(slow, event("tok_slow"))
        racer = asyncio.create_task(fast())
        await asyncio.sleep(0.3)
        if db.is_postgres:
            assert not fast_done.is_set()  # queued behind the open one, in id order
        assert await puller.run_once() == 0 or fast_done.is_set()
    await asyncio.wait_for(racer, timeout=10)
    while await puller.run_once():
        pass
    async with container.db.transaction(write=False) as uow:
        rows = [r[0] for r in await uow.conn.execute(sa.text("SELECT event FROM audit_outbox"))]
    assert any("tok_slow" in e for e in rows)
    assert any("tok_fast" in e for e in rows)
