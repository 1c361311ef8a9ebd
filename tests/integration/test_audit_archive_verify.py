"""``hammerlock audit verify --archive``: an archive checked on its own, and tampered with.

The archive is made as production makes it: events recorded through the audit service,
sequenced by the real sequencer (a signed head per round: sizes 100, 200, 300, 350), shipped by
the relay to the archive sink in segments of 100. Each tampering case then does what someone
with write access to the archive folder could: edit an event (and fix up what is not signed:
the leaf hash, the gzip, the manifest's SHA-256), drop or reorder, or forge a head. Both
database backends make the archive; the check itself never opens a database when the public
key is given.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from pathlib import Path

import orjson
import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hammerlock.audit import service as audit
from hammerlock.audit.archive_verify import ArchiveReport, verify_archive
from hammerlock.audit.merkle import leaf_hash, root_from_leaf_hashes, sign_tree_head
from hammerlock.audit.model import Context
from hammerlock.audit.relay import Relay, tree_head_covering
from hammerlock.audit.signing import key_id_for
from hammerlock.audit.sinks.archive import ArchiveSink, LocalArchiveStore, segment_name
from hammerlock.audit.verify import TrustAnchor
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from tests.servers import hammerlock_env, run_cli

ROUNDS = (100, 100, 100, 50)
SEGMENTS = [
    segment_name(0, 99),
    segment_name(100, 199),
    segment_name(200, 299),
    segment_name(300, 349),
]


async def record_and_sequence(container: Container, clock: FixedClock, n: int) -> None:
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        await audit.record_many(
            uow,
            [
                ctx.event(
                    "test.archive.event",
                    resource_type="thing",
                    resource_id=f"t{i}",
                    ts_us=uow.clock.now_us(),
                    details={"i": i, "text": "\u00e9" if i % 7 == 0 else "a"},
                )
                for i in range(n)
            ],
        )
    while await container.sequencer.run_once():
        pass
    clock.advance(2)


async def ship(container: Container, root: Path, *, close: bool = True) -> None:
    """Relay the log to an archive in ``root``; closing the sink seals what is spooled."""
    sink = ArchiveSink(
        LocalArchiveStore(root),
        root / ".spool",
        functools.partial(tree_head_covering, container.db),
        segment_events=100,
    )
    relay = Relay(container.db, sink, node="test", page_size=100)
    while await relay.run_once():
        pass
    await (relay.close() if close else relay.release())


@pytest.fixture
async def archive(container: Container, clock: FixedClock, tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    for n in ROUNDS:
        await record_and_sequence(container, clock, n)
    await ship(container, root)
    return root


def anchor_of(container: Container) -> TrustAnchor:
    public = Ed25519PublicKey.from_public_bytes(container.audit_signer.public_raw)
    return TrustAnchor.out_of_band([public], "the test's signing key")


async def check(container: Container, root: Path) -> ArchiveReport:
    return await verify_archive(LocalArchiveStore(root), anchor=anchor_of(container))


def first(result: ArchiveReport) -> str:
    assert not result.ok, "verify --archive passed a tampered archive"
    return str(result.report.first_problem)


def lines_of(root: Path, segment: str) -> list[bytes]:
    return gzip.decompress((root / segment).read_bytes()).splitlines()


def rewrite(root: Path, segment: str, lines: list[bytes]) -> None:
    """Write a segment back and fix its manifest's SHA-256 and count (a manifest is not
    signed: anyone who can write the folder can rewrite it)."""
    packed = gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)
    (root / segment).write_bytes(packed)
    manifest_path = root / segment.replace(".jsonl.gz", ".manifest.json")
    manifest = orjson.loads(manifest_path.read_bytes())
    manifest["sha256"] = hashlib.sha256(packed).hexdigest()
    manifest_path.write_bytes(orjson.dumps(manifest))


def as_archived(event: dict[str, object]) -> bytes:
    """An event as the sink writes it, its leaf hash recomputed: an edit that hides well."""
    canonical = rfc8785.dumps(event)
    return canonical[:-1] + b',"leaf_hash":"' + leaf_hash(canonical).hex().encode() + b'"}'


def event_of(line: bytes) -> dict[str, object]:
    event = orjson.loads(line)
    del event["leaf_hash"]
    return dict(event)


# --- intact ------------------------------------------------------------------------------------


async def test_an_intact_archive_passes(container: Container, archive: Path) -> None:
    names = sorted(p.name for p in archive.iterdir() if p.is_file())
    assert [n for n in names if n.endswith(".jsonl.gz")] == SEGMENTS
    result = await check(container, archive)
    assert result.ok, [str(p) for p in result.report.problems]
    assert (result.segments, result.report.events) == (4, 350)
    assert result.report.heads == 4  # sizes 100, 200, 300, 350
    assert result.heads_beyond == 0


async def test_a_head_beyond_the_archive_is_checked_for_its_signature_only(
    container: Container, clock: FixedClock, tmp_path: Path
) -> None:
    # 150 events in one round: one head of 150; the segment 0..99 is sealed with it, 100..149
    # stay spooled.
    await record_and_sequence(container, clock, 150)
    root = tmp_path / "archive"
    await ship(container, root, close=False)
    result = await check(container, root)
    assert result.ok, [str(p) for p in result.report.problems]
    assert (result.report.events, result.heads_beyond) == (100, 1)


# --- tampered ----------------------------------------------------------------------------------


async def test_an_edited_event_is_caught(container: Container, archive: Path) -> None:
    lines = lines_of(archive, SEGMENTS[1])
    lines[20] = lines[20].replace(b'"action":"test.archive.event"', b'"action":"test.archive.evil"')
    rewrite(archive, SEGMENTS[1], lines)
    assert first(await check(container, archive)) == (
        f"seq 120: {SEGMENTS[1]}: leaf_hash is not SHA-256(0x00 ‖ canonical)"
    )


async def test_an_edited_event_with_its_leaf_hash_recomputed_is_caught_by_the_head(
    container: Container, archive: Path
) -> None:
    lines = lines_of(archive, SEGMENTS[1])
    event = event_of(lines[20])
    event["details"] = {"i": 20, "text": "forged"}
    lines[20] = as_archived(event)
    rewrite(archive, SEGMENTS[1], lines)
    assert first(await check(container, archive)) == (
        "tree head of size 200: root_hash differs from the root of the tree rebuilt from the "
        f"log (the seal of {SEGMENTS[1]})"
    )


async def test_a_dropped_segment_is_caught(container: Container, archive: Path) -> None:
    (archive / SEGMENTS[1]).unlink()
    (archive / SEGMENTS[1].replace(".jsonl.gz", ".manifest.json")).unlink()
    result = await check(container, archive)
    assert first(result) == f"seq 100: {SEGMENTS[2]}: missing (no row for seq 100..199)"


async def test_a_segment_file_dropped_beside_its_manifest_is_caught(
    container: Container, archive: Path
) -> None:
    (archive / SEGMENTS[0]).unlink()
    assert first(await check(container, archive)).startswith(
        f"seq 0: {SEGMENTS[0]}: missing (its manifest is there)"
    )


async def test_swapped_events_are_caught(container: Container, archive: Path) -> None:
    lines = lines_of(archive, SEGMENTS[0])
    lines[10], lines[11] = lines[11], lines[10]
    rewrite(archive, SEGMENTS[0], lines)
    result = await check(container, archive)
    assert first(result) == f"seq 10: {SEGMENTS[0]}: missing (no row for seq 10)"
    assert str(result.report.problems[1]) == (
        f"seq 10: {SEGMENTS[0]}: out of sequence (expected seq 12)"
    )


async def test_a_deleted_event_is_caught(container: Container, archive: Path) -> None:
    lines = lines_of(archive, SEGMENTS[2])
    del lines[50]
    rewrite(archive, SEGMENTS[2], lines)
    assert first(await check(container, archive)) == (
        f"seq 200: {SEGMENTS[2]}: holds 99 events, its manifest says 100"
    )


async def test_a_forged_head_is_caught(container: Container, archive: Path) -> None:
    """Edit an event, rebuild the tree and re-sign the covering head with a key of one's own:
    only the key held out of band catches it."""
    lines = lines_of(archive, SEGMENTS[0])
    event = event_of(lines[5])
    event["details"] = {"i": 5, "text": "forged"}
    lines[5] = as_archived(event)
    rewrite(archive, SEGMENTS[0], lines)
    hashes = [leaf_hash(rfc8785.dumps(event_of(line))) for line in lines]
    forger = Ed25519PrivateKey.generate()
    raw = forger.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    manifest_path = archive / SEGMENTS[0].replace(".jsonl.gz", ".manifest.json")
    manifest = orjson.loads(manifest_path.read_bytes())
    head = manifest["tree_head"]
    assert head["size"] == 100
    head["root_hash"] = root_from_leaf_hashes(hashes).hex()
    head["key_id"] = key_id_for(raw)
    head["signature"] = base64.b64encode(
        sign_tree_head(forger, 100, head["root_hash"], head["timestamp"])
    ).decode()
    manifest_path.write_bytes(orjson.dumps(manifest))

    message = first(await check(container, archive))
    assert message.startswith("tree head of size 100: signed by key ")
    assert "which is not in the trust anchor" in message
    assert message.endswith(f"(the seal of {SEGMENTS[0]})")
    # The genuine heads after it do not sign the edited tree.
    problems = [str(p) for p in (await check(container, archive)).report.problems]
    assert any(p.startswith("tree head of size 200: root_hash differs") for p in problems)


async def test_a_replaced_root_is_caught(container: Container, archive: Path) -> None:
    manifest_path = archive / SEGMENTS[2].replace(".jsonl.gz", ".manifest.json")
    manifest = orjson.loads(manifest_path.read_bytes())
    manifest["tree_head"]["root_hash"] = "00" * 32
    manifest_path.write_bytes(orjson.dumps(manifest))
    assert first(await check(container, archive)).startswith(
        "tree head of size 300: root_hash differs"
    )


async def test_a_segment_without_its_manifest_is_caught(
    container: Container, archive: Path
) -> None:
    (archive / SEGMENTS[0].replace(".jsonl.gz", ".manifest.json")).unlink()
    result = await check(container, archive)
    assert first(result) == f"seq 0: {SEGMENTS[0]}: a segment file without a manifest"


# --- the command -------------------------------------------------------------------------------


async def test_the_command(container: Container, archive: Path, tmp_path: Path) -> None:
    env = hammerlock_env(
        container.settings.data_dir,
        database_url=container.settings.effective_database_url,
        pepper="test-pepper-not-secret",
    )
    pem = tmp_path / "audit.pem"
    pem.write_bytes(container.audit_signer.public_pem())

    done = run_cli(["audit", "verify", "--archive", str(archive), "--public-key", str(pem)], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked 4 segments, 350 events and 4 signed tree heads" in done.stdout
    assert "intact" in done.stdout

    # No key given: the database's keys (it says so).
    done = run_cli(["audit", "verify", "--archive", str(archive)], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trust anchor: the database's audit_signing_keys" in done.stdout

    # With the key out of band no database is needed at all.
    offline = hammerlock_env(
        tmp_path / "nowhere", database_url="postgresql+asyncpg://x@0.0.0.0:1/x"
    )
    done = run_cli(
        ["audit", "verify", "--archive", str(archive), "--public-key", str(pem)], offline
    )
    assert done.returncode == 0, done.stdout + done.stderr

    (archive / SEGMENTS[1]).unlink()
    (archive / SEGMENTS[1].replace(".jsonl.gz", ".manifest.json")).unlink()
    done = run_cli(["audit", "verify", "--archive", str(archive), "--public-key", str(pem)], env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"TAMPERED: seq 100: {SEGMENTS[2]}: missing (no row for seq 100..199)" in done.stdout

    done = run_cli(["audit", "verify", "--archive", str(tmp_path / "absent")], env)
    assert done.returncode == 2
    assert "Invalid value for --archive" in done.stderr
