"""The audit trail's HTTP API: events as stored leaves, filters, pages, signed heads, proofs
that verify against them, keys, errors, roles, and every read itself audited.

Runs on SQLite and PostgreSQL (the ``client`` fixture is parametrised by backend). The log is
made by the real sequencer, with heads at sizes on both sides of the 256-leaf tile boundaries.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import rfc8785
import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hammerlock.audit import merkle
from hammerlock.audit import service as audit
from hammerlock.audit.model import Actor, Context, Origin
from hammerlock.audit.signing import key_id_for
from hammerlock.audit.storage import audit_log, audit_outbox, audit_tree_tiles
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339, from_us
from hammerlock.security.permissions import Role
from tests.conftest import Keys

PROBLEM = "application/problem+json"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")  # RFC 4648 §4, not the URL-safe alphabet
EVENT_FIELDS = {
    "seq", "event_id", "ts", "actor", "action", "resource", "outcome", "origin", "request_id",
    "details", "leaf_hash",
}  # fmt: skip
HEAD_FIELDS = {"size", "root_hash", "timestamp", "key_id", "signature"}
BATCHES = (1, 254, 1, 300, 100, 400)  # heads at 1, 255, 256, 556, 656, 1056
ROUTES = (
    "/v1/audit/events",
    "/v1/audit/tree_head",
    "/v1/audit/tree_heads",
    "/v1/audit/proof/inclusion?seq=0",
    "/v1/audit/proof/consistency?first=1&second=1",
    "/v1/audit/public_keys",
)

ALICE = Context(
    actor=Actor(principal_id="prn_alice", role="operator", key_id="key_alice"),
    origin=Origin(ip="10.0.0.1", user_agent="tests", node="n1"),
    request_id="req_alice",
)
BOB = Context(actor=Actor(principal_id="prn_bob", role="service", key_id="key_bob"))


@dataclass
class Log:
    head_sizes: list[int]
    batch_start_us: list[int]  # ts of each batch's events
    canonical: list[bytes]  # by seq, as stored
    leaves: list[bytes]  # leaf hashes by seq


def _details(seq: int) -> dict[str, Any]:
    # Keys whose RFC 8785 order (UTF-16 code units) differs from code point order.
    awkward = {"\ue000": 1, "\U0001f600": 2} if seq % 5 == 0 else {}
    return {
        **awkward,
        "n": seq,
        "big": 2**53 - 1,
        "neg": -(2**53 - 1),
        "flag": seq % 2 == 0,
        "none": None,
        "list": [1, "two", {"three": [3]}],
        "text": 'caf\u00e9 \U0001f600 \u20ac "quoted" back\\slash \t tab' if seq % 5 == 0 else "a",
        "\u00e9t\u00e9": "unicode key",
    }


async def _emit_batch(container: Container, n: int, first: int) -> None:
    async with container.db.transaction() as uow:
        now = uow.clock.now_us()
        await audit.record_many(
            uow,
            [
                (ALICE if (first + i) % 3 else BOB).event(
                    "test.write" if (first + i) % 2 else "test.other",
                    resource_type="widget" if (first + i) % 4 else "gadget",
                    resource_id=f"w{(first + i) % 10}",
                    ts_us=now,
                    details=_details(first + i),
                )
                for i in range(n)
            ],
        )


async def _stored(container: Container) -> list[sa.Row[Any]]:
    async with container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(
            sa.select(audit_log.c.seq, audit_log.c.canonical, audit_log.c.leaf_hash).order_by(
                audit_log.c.seq
            )
        )
        return list(rows)


@pytest.fixture
async def log(container: Container, clock: FixedClock) -> Log:
    heads, starts, done = [], [], 0
    for n in BATCHES:
        starts.append(clock.now_us())
        await _emit_batch(container, n, done)
        done += n
        assert await container.sequencer.run_once() == n
        heads.append(done)
        clock.advance(10)
    rows = await _stored(container)
    return Log(
        head_sizes=heads,
        batch_start_us=starts,
        canonical=[r.canonical.encode() for r in rows],
        leaves=[bytes.fromhex(r.leaf_hash) for r in rows],
    )


@pytest.fixture
async def auditor(keys: Keys) -> dict[str, str]:
    return await keys.headers(Role.AUDITOR)


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert (body["status"], body["code"]) == (status, code), body
    return body


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> Any:
    r = await client.get(url, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


async def _all_events(
    client: httpx.AsyncClient, headers: dict[str, str], query: str = "", limit: int = 1000
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        after = "" if cursor is None else f"&after_seq={cursor}"
        page = await _get(client, f"/v1/audit/events?limit={limit}{query}{after}", headers)
        assert set(page) == {"data", "next_cursor"}
        items.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert cursor == str(page["data"][-1]["seq"])
    raise AssertionError("pagination did not end")


async def _outbox(container: Container) -> list[dict[str, Any]]:
    async with container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(sa.select(audit_outbox.c.event).order_by(audit_outbox.c.id))
        return [orjson.loads(e) for (e,) in rows]


# --- events -------------------------------------------------------------------------------------


async def test_each_event_is_its_stored_leaf(
    client: httpx.AsyncClient, log: Log, auditor: dict[str, str]
) -> None:
    items = await _all_events(client, auditor)
    assert [e["seq"] for e in items] == list(range(len(log.canonical)))
    for item, stored, leaf in zip(items, log.canonical, log.leaves, strict=True):
        assert set(item) == EVENT_FIELDS
        assert HEX64.fullmatch(item["leaf_hash"])
        event = {k: v for k, v in item.items() if k != "leaf_hash"}
        canonical = rfc8785.dumps(event)  # what an auditor's own JCS makes of the served event
        assert canonical == stored
        assert hashlib.sha256(b"\x00" + canonical).hexdigest() == item["leaf_hash"] == leaf.hex()
    # The awkward values made it through HTTP unchanged.
    assert items[5]["details"]["text"].startswith("caf\u00e9 \U0001f600")
    assert items[0]["details"]["big"] == 2**53 - 1
    assert items[0]["actor"] == {"principal_id": "prn_bob", "role": "service", "key_id": "key_bob"}
    assert items[1]["origin"] == {"ip": "10.0.0.1", "user_agent": "tests", "node": "n1"}
    assert items[1]["outcome"] == {"status": "success", "code": None}


async def test_pages_follow_after_seq_and_next_cursor(
    client: httpx.AsyncClient, log: Log, auditor: dict[str, str]
) -> None:
    n = len(log.canonical)
    everything = await _all_events(client, auditor)
    assert await _all_events(client, auditor, limit=97) == everything
    first = await _get(client, "/v1/audit/events", auditor)  # defaults: from seq 0, 100 items
    assert [e["seq"] for e in first["data"]] == list(range(100))
    assert first["next_cursor"] == "99"
    page = await _get(client, "/v1/audit/events?after_seq=10&limit=3", auditor)
    assert [e["seq"] for e in page["data"]] == [11, 12, 13]  # after_seq is exclusive
    assert page["next_cursor"] == "13"
    last = await _get(client, f"/v1/audit/events?after_seq={n - 4}&limit=3", auditor)
    assert [e["seq"] for e in last["data"]] == [n - 3, n - 2, n - 1]
    assert last["next_cursor"] is None  # exactly the rest: no empty page to fetch
    end = await _get(client, f"/v1/audit/events?after_seq={n - 1}", auditor)
    assert end == {"data": [], "next_cursor": None}
    for bad in ("limit=0", "limit=1001", "after_seq=-1", "after_seq=x", f"after_seq={2**53}"):
        assert_problem(
            await client.get(f"/v1/audit/events?{bad}", headers=auditor), 422, "validation_error"
        )


async def test_filters(client: httpx.AsyncClient, log: Log, auditor: dict[str, str]) -> None:
    everything = await _all_events(client, auditor)

    async def check(query: str, keep: Any) -> None:
        expected = [e["seq"] for e in everything if keep(e)]
        assert expected, query  # each filter must select something, and not everything
        assert len(expected) < len(everything), query
        for limit in (1000, 7):  # pages of a filtered listing continue the filter
            got = await _all_events(client, auditor, "&" + query, limit=limit)
            assert [e["seq"] for e in got] == expected, query

    await check("actor_id=prn_bob", lambda e: e["actor"]["principal_id"] == "prn_bob")
    await check("action=test.write", lambda e: e["action"] == "test.write")
    await check("resource_type=gadget", lambda e: e["resource"]["type"] == "gadget")
    await check("resource_id=w3", lambda e: e["resource"]["id"] == "w3")
    await check(
        "resource_type=widget&resource_id=w3&actor_id=prn_alice&action=test.write",
        lambda e: (
            (e["resource"], e["actor"]["principal_id"], e["action"])
            == ({"type": "widget", "id": "w3"}, "prn_alice", "test.write")
        ),
    )
    # since is inclusive, until exclusive: batch 3 (seq 256..555) exactly.
    since, until = format_rfc3339(log.batch_start_us[3]), format_rfc3339(log.batch_start_us[4])
    window = await _all_events(client, auditor, f"&since={since}&until={until}")
    assert [e["seq"] for e in window] == list(range(256, 556))
    assert {e["ts"] for e in window} == {since}
    # The start of batch 4 written with a +02:00 offset is the same instant.
    offset = from_us(log.batch_start_us[4]).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert offset.endswith("+02:00")
    later = await _all_events(client, auditor, f"&since={offset.replace('+', '%2B')}")
    assert [e["seq"] for e in later] == list(range(556, len(everything)))
    await check(f"until={since}", lambda e: e["seq"] < 256)
    empty = await _get(client, f"/v1/audit/events?since={since}&until={since}", auditor)
    assert empty == {"data": [], "next_cursor": None}
    assert_problem(
        await client.get(f"/v1/audit/events?since={until}&until={since}", headers=auditor),
        422,
        "invalid_range",
    )
    for bad in ("since=2026-01-01T00:00:00", "until=yesterday", "actor_id=" + "x" * 129):
        assert_problem(
            await client.get(f"/v1/audit/events?{bad}", headers=auditor), 422, "validation_error"
        )


# --- heads and keys ------------------------------------------------------------------------------


async def test_signed_heads_and_public_keys(
    client: httpx.AsyncClient, log: Log, auditor: dict[str, str], container: Container
) -> None:
    keys = await _get(client, "/v1/audit/public_keys", auditor)
    assert set(keys) == {"keys"}
    [key] = keys["keys"]
    assert set(key) == {"key_id", "algorithm", "public_key"}
    assert key["algorithm"] == "ed25519"
    assert BASE64.fullmatch(key["public_key"])
    raw = base64.b64decode(key["public_key"], validate=True)
    assert raw == container.audit_signer.public_raw
    assert key["key_id"] == key_id_for(raw)
    public = Ed25519PublicKey.from_public_bytes(raw)

    listed = await _get(client, "/v1/audit/tree_heads", auditor)
    assert listed["next_cursor"] is None
    heads = listed["data"]
    assert [h["size"] for h in heads] == log.head_sizes
    latest = await _get(client, "/v1/audit/tree_head", auditor)
    assert latest == heads[-1]
    for head in heads:
        assert set(head) == HEAD_FIELDS
        assert head["key_id"] == key["key_id"]
        assert HEX64.fullmatch(head["root_hash"])
        assert BASE64.fullmatch(head["signature"])
        signature = base64.b64decode(head["signature"], validate=True)
        assert merkle.verify_tree_head(
            public, head["size"], head["root_hash"], head["timestamp"], signature
        )
        expected = merkle.root_from_leaf_hashes(log.leaves[: head["size"]])
        assert head["root_hash"] == expected.hex()

    page = await _get(client, "/v1/audit/tree_heads?limit=2", auditor)
    assert [h["size"] for h in page["data"]] == log.head_sizes[:2]
    assert page["next_cursor"] == str(log.head_sizes[1])
    page = await _get(client, f"/v1/audit/tree_heads?after_size={page['next_cursor']}", auditor)
    assert [h["size"] for h in page["data"]] == log.head_sizes[2:]
    page = await _get(client, "/v1/audit/tree_heads?after_size=256&limit=3", auditor)
    assert [h["size"] for h in page["data"]] == [556, 656, 1056]
    assert page["next_cursor"] is None
    for bad in ("limit=0", "limit=1001", "after_size=-1"):
        assert_problem(
            await client.get(f"/v1/audit/tree_heads?{bad}", headers=auditor),
            422,
            "validation_error",
        )


# --- proofs --------------------------------------------------------------------------------------


async def test_inclusion_proofs_verify_against_the_served_heads(
    client: httpx.AsyncClient, log: Log, auditor: dict[str, str]
) -> None:
    heads = {h["size"]: h for h in (await _get(client, "/v1/audit/tree_heads", auditor))["data"]}
    for size, head in heads.items():
        root = bytes.fromhex(head["root_hash"])
        for seq in sorted({0, 1, 254, 255, 256, 257, 300, 511, 512, 555, 1000, size - 1}):
            if seq >= size:
                continue
            proof = await _get(
                client, f"/v1/audit/proof/inclusion?seq={seq}&tree_size={size}", auditor
            )
            assert set(proof) == {"leaf_index", "tree_size", "path"}
            assert (proof["leaf_index"], proof["tree_size"]) == (seq, size)
            assert all(HEX64.fullmatch(h) for h in proof["path"])
            path = [bytes.fromhex(h) for h in proof["path"]]
            assert merkle.verify_inclusion(log.leaves[seq], seq, size, path, root), (seq, size)
            assert path == merkle.inclusion_proof(seq, size, log.leaves)  # the naive reference
            if path:  # and the check can fail
                forged = [bytes(32), *path[1:]]
                assert not merkle.verify_inclusion(log.leaves[seq], seq, size, forged, root)
    latest = await _get(client, "/v1/audit/proof/inclusion?seq=700", auditor)
    assert latest["tree_size"] == log.head_sizes[-1]  # tree_size omitted: the latest head


async def test_consistency_proofs_verify_between_the_served_heads(
    client: httpx.AsyncClient, log: Log, auditor: dict[str, str]
) -> None:
    heads = {h["size"]: h for h in (await _get(client, "/v1/audit/tree_heads", auditor))["data"]}
    for first in heads:
        for second in heads:
            if first > second:
                continue
            proof = await _get(
                client, f"/v1/audit/proof/consistency?first={first}&second={second}", auditor
            )
            assert set(proof) == {"first", "second", "path"}
            assert (proof["first"], proof["second"]) == (first, second)
            path = [bytes.fromhex(h) for h in proof["path"]]
            roots = (
                bytes.fromhex(heads[first]["root_hash"]),
                bytes.fromhex(heads[second]["root_hash"]),
            )
            assert merkle.verify_consistency(first, second, *roots, path), (first, second)
            assert path == merkle.consistency_proof(first, second, log.leaves)
            if first == second:
                assert path == []


async def test_proof_errors(client: httpx.AsyncClient, log: Log, auditor: dict[str, str]) -> None:
    n = log.head_sizes[-1]

    async def problem(url: str, status: int, code: str) -> None:
        assert_problem(await client.get(url, headers=auditor), status, code)

    await problem("/v1/audit/proof/inclusion?seq=0&tree_size=2", 404, "audit_proof_unavailable")
    await problem(
        f"/v1/audit/proof/inclusion?seq=0&tree_size={n + 1}", 404, "audit_proof_unavailable"
    )
    await problem("/v1/audit/proof/inclusion?seq=256&tree_size=256", 422, "invalid_range")
    await problem(f"/v1/audit/proof/inclusion?seq={n}", 422, "invalid_range")
    await problem("/v1/audit/proof/consistency?first=556&second=256", 422, "invalid_range")
    await problem("/v1/audit/proof/consistency?first=2&second=256", 404, "audit_proof_unavailable")
    await problem("/v1/audit/proof/consistency?first=1&second=257", 404, "audit_proof_unavailable")
    for bad in (
        "inclusion",
        "inclusion?seq=-1",
        "inclusion?seq=0&tree_size=0",
        "consistency?first=1",
        "consistency?first=0&second=1",
    ):
        await problem(f"/v1/audit/proof/{bad}", 422, "validation_error")


async def test_proofs_are_built_from_the_stored_tiles(
    client: httpx.AsyncClient, log: Log, auditor: dict[str, str], container: Container
) -> None:
    """The proof of seq 1000 in the tree of 1,056 reads tile 0, not 256 leaf rows: a tile
    changed behind the log's back (its trigger dropped) shows in the proof."""
    url = "/v1/audit/proof/inclusion?seq=1000&tree_size=1056"
    before = await _get(client, url, auditor)
    async with container.db.transaction() as uow:
        if uow.is_postgres:
            await uow.conn.exec_driver_sql("ALTER TABLE audit_tree_tiles DISABLE TRIGGER ALL")
        else:
            await uow.conn.exec_driver_sql("DROP TRIGGER audit_tree_tiles_no_update")
        await uow.conn.execute(
            audit_tree_tiles.update().where(audit_tree_tiles.c.idx == 0).values(hash="00" * 32)
        )
    after = await _get(client, url, auditor)
    assert after["path"] != before["path"]
    root = merkle.root_from_leaf_hashes(log.leaves)
    path = [bytes.fromhex(h) for h in after["path"]]
    assert not merkle.verify_inclusion(log.leaves[1000], 1000, 1056, path, root)


async def test_an_empty_log(client: httpx.AsyncClient, auditor: dict[str, str]) -> None:
    assert_problem(
        await client.get("/v1/audit/tree_head", headers=auditor), 404, "tree_head_not_found"
    )
    assert await _get(client, "/v1/audit/tree_heads", auditor) == {"data": [], "next_cursor": None}
    assert await _get(client, "/v1/audit/events", auditor) == {"data": [], "next_cursor": None}
    assert await _get(client, "/v1/audit/public_keys", auditor) == {"keys": []}
    assert_problem(
        await client.get("/v1/audit/proof/inclusion?seq=0", headers=auditor),
        404,
        "audit_proof_unavailable",
    )


# --- the auditor's snippet in docs/audit.md -------------------------------------------------------


def _doc_snippets() -> list[str]:
    text = (Path(__file__).parents[2] / "docs" / "audit.md").read_text()
    section = text.split("## Verify it yourself", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


async def test_the_auditors_snippet_in_the_docs_verifies_real_answers(
    client: httpx.AsyncClient, log: Log, auditor: dict[str, str]
) -> None:
    """docs/audit.md promises a few lines of hashlib + cryptography suffice: run them."""
    functions, usage = _doc_snippets()
    namespace: dict[str, Any] = {}
    exec(functions, namespace)  # noqa: S102 - our own documentation, run as the auditor would
    head = await _get(client, "/v1/audit/tree_heads?after_size=556&limit=1", auditor)
    key = (await _get(client, "/v1/audit/public_keys", auditor))["keys"][0]["public_key"]
    [head] = head["data"]
    events = await _all_events(client, auditor)
    for seq in (0, 5, 255, 300, head["size"] - 1):  # 5: non-ASCII text and an emoji
        proof = await _get(
            client, f"/v1/audit/proof/inclusion?seq={seq}&tree_size={head['size']}", auditor
        )
        scope = {**namespace, "head": head, "event": events[seq], "proof": proof,
                 "PUBLIC_KEY_B64": key}  # fmt: skip
        exec(usage, scope)  # noqa: S102
    # ... and they catch a changed event, a changed head and a wrong key.
    changed = {**events[5], "details": {**events[5]["details"], "n": 6}}
    assert namespace["leaf_hash"](changed).hex() != events[5]["leaf_hash"]
    proof = await _get(client, f"/v1/audit/proof/inclusion?seq=5&tree_size={head['size']}", auditor)
    path = [bytes.fromhex(h) for h in proof["path"]]
    root = bytes.fromhex(head["root_hash"])
    assert namespace["included"](namespace["leaf_hash"](events[5]), 5, head["size"], path, root)
    assert not namespace["included"](namespace["leaf_hash"](changed), 5, head["size"], path, root)
    assert not namespace["included"](namespace["leaf_hash"](events[5]), 6, head["size"], path, root)
    with pytest.raises(InvalidSignature):
        namespace["head_signed"]({**head, "size": head["size"] + 1}, key)
    other = base64.b64encode(bytes(32)).decode()
    with pytest.raises((InvalidSignature, ValueError)):
        namespace["head_signed"](head, other)


# --- reads are audited; roles --------------------------------------------------------------------


async def test_every_read_is_audited_refusals_included(
    client: httpx.AsyncClient, log: Log, keys: Keys, container: Container
) -> None:
    caller = await keys.create(Role.AUDITOR, "prn_the_auditor")
    headers, key = caller["headers"], caller["key"]
    calls = [
        ("/v1/audit/events?limit=5&action=test.write", "audit.events.read", "success", None),
        ("/v1/audit/events?since=2027-01-01T00:00:00Z&until=2026-01-01T00:00:00Z",
         "audit.events.read", "failure", "invalid_range"),
        ("/v1/audit/tree_head", "audit.proofs.read", "success", None),
        ("/v1/audit/tree_heads?limit=2", "audit.proofs.read", "success", None),
        ("/v1/audit/proof/inclusion?seq=3&tree_size=256", "audit.proofs.read", "success", None),
        ("/v1/audit/proof/inclusion?seq=0&tree_size=7",
         "audit.proofs.read", "failure", "audit_proof_unavailable"),
        ("/v1/audit/proof/consistency?first=1&second=256", "audit.proofs.read", "success", None),
        ("/v1/audit/proof/consistency?first=256&second=1",
         "audit.proofs.read", "failure", "invalid_range"),
        ("/v1/audit/public_keys", "audit.proofs.read", "success", None),
    ]  # fmt: skip
    for url, action, status, code in calls:
        before = len(await _outbox(container))
        r = await client.get(url, headers=headers)
        assert (r.status_code == 200) == (status == "success"), (url, r.text)
        new = (await _outbox(container))[before:]
        assert len(new) == 1, (url, new)
        [event] = new
        assert event["action"] == action, url
        assert event["outcome"] == {"status": status, "code": code}, url
        assert event["actor"] == {
            "principal_id": "prn_the_auditor",
            "role": "auditor",
            "key_id": key.id,
        }
        assert event["request_id"] == r.headers["x-request-id"]
    first = (await _outbox(container))[-len(calls) :]
    assert first[0]["details"] == {"limit": 5, "action": "test.write", "count": 5}
    assert first[4]["details"] == {"seq": 3, "tree_size": 256}
    assert first[4]["resource"] == {"type": "audit_inclusion_proof", "id": "3"}
    # Sequenced like any other event: the reads are in the log they read.
    await container.sequencer.run_once()
    reads = await _all_events(client, headers, "&actor_id=prn_the_auditor")
    assert [e["action"] for e in reads] == [a for _, a, _, _ in calls]


@pytest.mark.parametrize(
    "role", [Role.OPERATOR, Role.BIDDER, Role.SELLER, Role.REVIEWER, Role.SERVICE]
)
async def test_other_roles_are_refused_and_read_nothing(
    client: httpx.AsyncClient, log: Log, keys: Keys, container: Container, role: Role
) -> None:
    headers = await keys.headers(role)
    before = len(await _outbox(container))
    for url in ROUTES:
        assert_problem(await client.get(url, headers=headers), 403, "forbidden")
        assert_problem(await client.get(url), 401, "unauthenticated")
    new = await _outbox(container)
    assert {e["action"] for e in new[before:]} == {"auth.denied", "auth.failure"}
    assert len(new) - before == 2 * len(ROUTES)
