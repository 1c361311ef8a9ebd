"""The archive in S3: :class:`S3ArchiveStore` behind the archive sink, against a real S3 server
(moto's, started in this process on a free port), and ``audit verify --archive s3://…``.

Credentials are the standard AWS variables, set per test; one of them is a recognisable secret
that must never show in an error, a log line or the command's output.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from moto.server import ThreadedMotoServer

from hammerlock.audit import service as audit
from hammerlock.audit.archive_verify import verify_archive
from hammerlock.audit.model import Context
from hammerlock.audit.relay import Relay, build_relays, tree_head_covering
from hammerlock.audit.sinks import SinkUnavailable
from hammerlock.audit.sinks.archive import ArchiveSink, segment_name
from hammerlock.audit.sinks.archive_s3 import ArchiveStoreError, S3ArchiveStore
from hammerlock.audit.verify import TrustAnchor
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from tests.servers import free_port, hammerlock_env, run_cli

SECRET = "hl-test-secret-never-logged-7f3a"
PREFIX = "prod/audit/"


@dataclass(frozen=True)
class S3:
    url: str
    bucket: str


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A local S3 endpoint with a bucket of this test's own (moto keeps its state per process,
    not per server); AWS credentials in the environment."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIDHAMMERLOCKTEST",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    bucket = f"hl-audit-{secrets.token_hex(4)}"
    try:
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        yield S3(url, bucket)
    finally:
        server.stop()


async def record_and_sequence(container: Container, clock: FixedClock, n: int) -> None:
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        await audit.record_many(
            uow,
            [
                ctx.event(
                    "test.s3.event",
                    resource_type="thing",
                    resource_id=f"t{i}",
                    ts_us=uow.clock.now_us(),
                    details={"i": i},
                )
                for i in range(n)
            ],
        )
    while await container.sequencer.run_once():
        pass
    clock.advance(2)


async def ship(container: Container, store: S3ArchiveStore, spool: Path) -> None:
    sink = ArchiveSink(
        store, spool, functools.partial(tree_head_covering, container.db), segment_events=100
    )
    relay = Relay(container.db, sink, node="test", page_size=100)
    while await relay.run_once():
        pass
    await relay.close()


def anchor_of(container: Container) -> TrustAnchor:
    public = Ed25519PublicKey.from_public_bytes(container.audit_signer.public_raw)
    return TrustAnchor.out_of_band([public], "the test's signing key")


async def test_segments_go_to_s3_and_verify_from_there(
    container: Container, clock: FixedClock, s3: S3, tmp_path: Path
) -> None:
    for n in (100, 100, 50):
        await record_and_sequence(container, clock, n)
    store = S3ArchiveStore(s3.bucket, prefix=PREFIX.rstrip("/"), endpoint_url=s3.url)
    await ship(container, store, tmp_path / "spool")

    keys = sorted(
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3.url).list_objects_v2(Bucket=s3.bucket)[
            "Contents"
        ]
    )
    segments = [segment_name(0, 99), segment_name(100, 199), segment_name(200, 249)]
    assert keys == sorted(
        [PREFIX + s for s in segments]
        + [PREFIX + s.replace(".jsonl.gz", ".manifest.json") for s in segments]
    )
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # nothing left spooled

    result = await verify_archive(store, anchor=anchor_of(container))
    assert result.ok, [str(p) for p in result.report.problems]
    assert (result.segments, result.report.events, result.report.heads) == (3, 250, 3)

    # A dropped object is caught there too.
    boto3.client("s3", endpoint_url=s3.url).delete_object(
        Bucket=s3.bucket, Key=PREFIX + segments[1]
    )
    result = await verify_archive(store, anchor=anchor_of(container))
    assert str(result.report.first_problem) == (
        f"seq 100: {segments[1]}: missing (its manifest is there) — the segments after it are "
        "not checked"
    )


async def test_objects_are_put_under_object_lock(s3: S3) -> None:
    store = S3ArchiveStore(s3.bucket, endpoint_url=s3.url, object_lock_days=30)
    await store.put("events-000000000000-000000000009.jsonl.gz", b"sealed")
    head = boto3.client("s3", endpoint_url=s3.url).head_object(
        Bucket=s3.bucket, Key="events-000000000000-000000000009.jsonl.gz"
    )
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert await store.get("events-000000000000-000000000009.jsonl.gz") == b"sealed"
    assert await store.names() == ["events-000000000000-000000000009.jsonl.gz"]
    with pytest.raises(FileNotFoundError):
        await store.get("events-000000000010-000000000019.jsonl.gz")
    with pytest.raises(ValueError, match="plain file names"):
        await store.put("../escape", b"x")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_an_unreachable_store_is_a_retry_and_never_shows_the_secret(
    container: Container,
    clock: FixedClock,
    s3: S3,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The credentials are set (by the fixture); the endpoint below has nobody listening.
    await record_and_sequence(container, clock, 10)
    store = S3ArchiveStore(s3.bucket, endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ArchiveStoreError) as failed:
        await store.names()
    assert SECRET not in str(failed.value)
    sink = ArchiveSink(
        store, tmp_path / "spool", functools.partial(tree_head_covering, container.db)
    )
    relay = Relay(container.db, sink, node="test", page_size=100)
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(SinkUnavailable) as unavailable:
            await relay.run_once()
        await relay.release()
    assert SECRET not in str(unavailable.value)
    assert SECRET not in caplog.text
    assert SECRET not in repr(logs)
    assert SECRET not in repr(store)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_settings_wire_the_s3_store(container: Container, tmp_path: Path) -> None:
    relays = build_relays(
        container.db,
        node="test",
        archive_dir=tmp_path / "archive",
        archive_s3_bucket="hl-audit",
        archive_s3_prefix="audit",
        archive_s3_endpoint_url="http://127.0.0.1:9",
    )
    store = relays[0].sink._store  # type: ignore[attr-defined]
    assert isinstance(store, S3ArchiveStore)
    assert (store.bucket, store.prefix) == ("hl-audit", "audit/")


async def test_the_command_reads_s3(
    container: Container, clock: FixedClock, s3: S3, tmp_path: Path
) -> None:
    await record_and_sequence(container, clock, 120)
    store = S3ArchiveStore(s3.bucket, prefix=PREFIX, endpoint_url=s3.url)
    await ship(container, store, tmp_path / "spool")
    pem = tmp_path / "audit.pem"
    pem.write_bytes(container.audit_signer.public_pem())
    env = hammerlock_env(
        container.settings.data_dir,
        database_url=container.settings.effective_database_url,
        pepper="test-pepper-not-secret",
        audit_archive_s3_endpoint_url=s3.url,
    )
    args = ["audit", "verify", "--archive", f"s3://{s3.bucket}/{PREFIX}", "--public-key", str(pem)]
    done = run_cli(args, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked 2 segments, 120 events" in done.stdout
    assert SECRET not in done.stdout + done.stderr

    done = run_cli([*args[:3], f"s3://{s3.bucket}/elsewhere/", *args[4:]], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked 0 segments, 0 events" in done.stdout
