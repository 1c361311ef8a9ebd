"""The audit trail never holds a card number: a canary test.

Requests carry Luhn-valid canary card numbers everywhere a client can put text — JSON bodies
(values and keys), headers (``Authorization`` and ``Idempotency-Key`` included), the query
string and the path, plain and with separators, with a valid key and without — between normal
activity (ledger accounts and transfers, audit reads, a refused permission, a failed sign-in).
The API refuses every one with 400 ``pan_not_allowed``. Then everything the audit trail is made
of is scanned with :func:`hammerlock.security.pan.find_pans`: ``audit_outbox``, ``audit_log``
(every column), the tree heads, the archive (sealed segments, manifests, spool) and
``tree_heads.jsonl``, and the log output of the whole run at debug level.
"""

from __future__ import annotations

import functools
import gzip
import logging
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from hammerlock.audit.relay import Relay, tree_head_covering
from hammerlock.audit.sinks.archive import ArchiveSink, LocalArchiveStore
from hammerlock.audit.storage import audit_log, audit_outbox, audit_tree_heads
from hammerlock.bootstrap import Container
from hammerlock.logs import configure_logging
from hammerlock.security.pan import card_brand, find_pans, luhn_valid
from hammerlock.security.permissions import Role
from tests.conftest import Keys


def canary(prefix: str, length: int) -> str:
    """A fresh Luhn-valid card number of a known brand (random middle digits, so it can only
    appear where this test put it)."""
    while True:
        body = prefix + "".join(secrets.choice("0123456789") for _ in range(length - len(prefix)))
        for check in "0123456789":
            if luhn_valid(body[:-1] + check) and card_brand(body[:-1] + check):
                return body[:-1] + check


VISA = canary("4", 16)
MASTERCARD = canary("51", 16)
AMEX = canary("37", 15)
CANARIES = {VISA, MASTERCARD, AMEX}


def spaced(pan: str) -> str:
    return " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))


def dashed(pan: str) -> str:
    return "-".join(pan[i : i + 4] for i in range(0, len(pan), 4))


def canaries_in(text: str) -> list[str]:
    """The canary numbers ``find_pans`` finds in ``text`` (other digit strings that happen to
    pass Luhn inside hashes and ids are not card numbers anyone sent)."""
    found = [text[s:e].replace(" ", "").replace("-", "") for s, e in find_pans(text)]
    return [pan for pan in found if pan in CANARIES]


@pytest.fixture
def debug_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every log line of the run, at debug level, as the entry points render them (JSON), into
    a file. The test's own HTTP client logs each URL it requests (canaries included): that is
    the client's log, not hammerlock's, so it stays at warning."""
    path = tmp_path / "hammerlock.log"
    with path.open("w") as sink:
        monkeypatch.setattr(sys, "stderr", sink)
        configure_logging("debug", "json")  # (which keeps httpx at debug: set it back after)
        monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.WARNING)
        try:
            yield path
        finally:
            monkeypatch.undo()
            configure_logging("warning", "json")


async def test_no_card_number_reaches_the_audit_trail(
    container: Container,
    client: httpx.AsyncClient,
    keys: Keys,
    tmp_path: Path,
    debug_log: Path,
) -> None:
    operator = await keys.headers(Role.OPERATOR)
    auditor = await keys.headers(Role.AUDITOR)
    bidder = await keys.headers(Role.BIDDER)
    refused: list[httpx.Response] = []

    # Normal activity before, between and after the attempts.
    r = await client.post(
        "/v1/ledger/accounts",
        headers=operator,
        json={"accounts": [{"id": a, "currency": "USD", "code": "test"} for a in ("a", "b")]},
    )
    assert r.status_code == 200, r.text

    def transfer(tid: str, **extra: object) -> dict[str, object]:
        return {"id": tid, "debit_account_id": "a", "credit_account_id": "b", "amount": 100,
                "currency": "USD", "code": "test", **extra}  # fmt: skip

    for pan in (VISA, spaced(MASTERCARD), dashed(AMEX)):
        body = {"transfers": [transfer("t-canary", metadata={"note": f"card {pan}"})]}
        refused.append(
            await client.post(
                "/v1/ledger/transfers",
                headers={**operator, "Idempotency-Key": secrets.token_hex(8)},
                json=body,
            )
        )
        refused.append(  # a key of the body, and no valid key at all
            await client.post(
                "/v1/ledger/transfers",
                headers={"Idempotency-Key": secrets.token_hex(8)},
                json={"transfers": [transfer("t2", metadata={pan: 1})]},
            )
        )
        refused.append(
            await client.get("/v1/ledger/accounts/a", headers={**operator, "X-Note": pan})
        )
        refused.append(
            await client.post(
                "/v1/ledger/transfers",
                headers={**operator, "Idempotency-Key": pan},
                json={"transfers": [transfer("t3")]},
            )
        )
        refused.append(await client.get("/v1/ledger/accounts/a", headers={"Authorization": pan}))
        refused.append(
            await client.get("/v1/ledger/accounts/a", headers={"Authorization": f"Bearer {pan}"})
        )
        refused.append(await client.get(f"/v1/ledger/accounts/{pan}", headers=operator))
        refused.append(
            await client.get("/v1/audit/events", headers=auditor, params={"actor_id": pan})
        )
        refused.append(await client.get("/v1/audit/events", headers=auditor, params={pan: "x"}))
        r = await client.post(
            "/v1/ledger/transfers",
            headers={**operator, "Idempotency-Key": secrets.token_hex(8)},
            json={"transfers": [transfer(f"t-{secrets.token_hex(4)}")]},
        )
        assert r.status_code == 200, r.text

    assert [(x.status_code, x.json()["code"]) for x in refused] == [(400, "pan_not_allowed")] * len(
        refused
    )
    # Refused and failed requests that are recorded: a permission denial, a failed sign-in.
    assert (await client.get("/v1/audit/events", headers=bidder)).status_code == 403
    assert (
        await client.get("/v1/audit/events", headers={"Authorization": "Bearer hl_nope"})
    ).status_code == 401
    assert (await client.get("/v1/audit/events", headers=auditor)).status_code == 200

    # The trail, everywhere it goes: sequenced, archived (sealed and spooled), heads on file.
    texts: dict[str, str] = {}
    async with container.db.transaction(write=False) as uow:
        texts["audit_outbox"] = "\n".join(
            str(tuple(r)) for r in await uow.conn.execute(sa.select(audit_outbox))
        )
    while await container.sequencer.run_once():
        pass
    archive = tmp_path / "archive"
    sink = ArchiveSink(
        LocalArchiveStore(archive),
        archive / ".spool",
        functools.partial(tree_head_covering, container.db),
        segment_events=4,
    )
    relay = Relay(container.db, sink, node="canary")
    while await relay.run_once():
        pass
    await relay.release()  # the last partial segment stays in the spool: scanned there
    async with container.db.transaction(write=False) as uow:
        log_rows = [tuple(r) for r in await uow.conn.execute(sa.select(audit_log))]
        texts["audit_log"] = "\n".join(map(str, log_rows))
        texts["audit_tree_heads"] = "\n".join(
            str(tuple(r)) for r in await uow.conn.execute(sa.select(audit_tree_heads))
        )
    for path in sorted(p for p in archive.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts[str(path)] = (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    heads_file = container.settings.data_dir / "audit" / "tree_heads.jsonl"
    texts[str(heads_file)] = heads_file.read_text()
    texts["log output"] = debug_log.read_text()

    # The scan is not vacuous: the normal activity and the refusals that are recorded are here.
    actions = texts["audit_log"]
    for action in ("ledger.accounts.create", "ledger.transfers.create", "audit.events.read",
                   "auth.denied", "auth.failure"):  # fmt: skip
        assert action in actions, action
    assert len(log_rows) >= 10
    assert "audit.relay_leader" in texts["log output"]  # the log was captured
    assert any(name.endswith(".jsonl.gz") for name in texts)

    leaks = {where: canaries_in(text) for where, text in texts.items()}
    assert {where: found for where, found in leaks.items() if found} == {}
    for where, text in texts.items():  # not even with its separators dropped
        digits_only = "".join(c for c in text if c.isdigit())
        assert not any(pan in digits_only for pan in CANARIES), where
