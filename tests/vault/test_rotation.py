"""``rotate-keys``: every data key re-wrapped under the new KEK, in batches, while serving."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from pathlib import Path

import sqlalchemy as sa

from hammerlock.audit.model import Context
from hammerlock.clock import FixedClock
from hammerlock.settings import Settings
from hammerlock.vault.container import VaultContainer
from hammerlock.vault.model import CardInput
from hammerlock.vault.schema import migrate_vault
from hammerlock.vault.storage import vault_cards, vault_keys
from tests.servers import hammerlock_env, run_cli
from tests.vault.conftest import VISA, Vault

CTX = Context.system("tests")
CARDS = ["4242424242424242", "5555555555554444", "378282246310005", "6011111111111117"]


async def _versions(vault: Vault) -> dict[str, int]:
    async with vault.container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(sa.select(vault_cards.c.id, vault_cards.c.kek_version))
        return {r.id: r.kek_version for r in rows}


async def _tokenize(vault: Vault, number: str) -> str:
    card = CardInput(number=number, exp_month=12, exp_year=2034)
    return (await vault.container.vault.tokenize(card, CTX, client="tests")).id


async def test_rotation_rewraps_everything_and_old_tokens_still_work(vault: Vault) -> None:
    tokens = {await _tokenize(vault, n): n for n in CARDS * 2}
    fingerprints = {t: (await vault.container.vault.token(t)).fingerprint for t in tokens}
    assert set((await _versions(vault)).values()) == {1}
    progress: list[tuple[int, int]] = []
    report = await vault.container.vault.rotate(
        CTX, add_version=True, batch_size=3, progress=lambda d, t: progress.append((d, t))
    )
    assert (report.active_version, report.rewrapped, report.failed) == (2, 8, [])
    assert progress == [(3, 8), (6, 8), (8, 8)]
    assert set((await _versions(vault)).values()) == {2}
    for token, number in tokens.items():
        card = await vault.container.vault.detokenize(token, CTX, purpose={})
        assert card.number == number
    new = await _tokenize(vault, VISA)
    assert (await _versions(vault))[new] == 2
    async with vault.container.db.transaction(write=False) as uow:
        assert await uow.conn.scalar(sa.select(vault_keys.c.kek_version)) == 2
    # A fresh vault process (reloads the re-wrapped fingerprint key): same fingerprints.
    again = VaultContainer(vault.container.settings, clock=vault.clock, gateways={})
    try:
        await again.start()
        card = CardInput(number=CARDS[0], exp_month=12, exp_year=2034)
        info = await again.vault.tokenize(card, CTX, client="tests")
        assert info.fingerprint == fingerprints[next(iter(tokens))]
    finally:
        await again.stop()
    events, _ = await vault.client.audit_events(after=0, limit=100)
    rotated = [e for e in events if e.action == "vault.keys.rotate"]
    assert [e.details["rewrapped"] for e in rotated] == [8]


async def test_tokenizing_during_a_rotation_loses_nothing(vault: Vault) -> None:
    for number in CARDS * 5:
        await _tokenize(vault, number)
    rotation = vault.container.vault.rotate(CTX, add_version=True, batch_size=2)
    _, *added = await asyncio.gather(rotation, *(_tokenize(vault, n) for n in CARDS * 3))
    # Rows written under v1 after the batch that would have moved them: a rewrap-only pass.
    await vault.container.vault.rotate(CTX, add_version=False)
    versions = await _versions(vault)
    assert len(versions) == 32
    assert set(versions.values()) == {2}
    for token in added:
        assert (await vault.container.vault.detokenize(token, CTX, purpose={})).number in CARDS


async def test_a_tampered_row_is_reported_and_the_rest_rotate(vault: Vault) -> None:
    good, bad = await _tokenize(vault, VISA), await _tokenize(vault, VISA)
    async with vault.container.db.transaction() as uow:
        await uow.conn.execute(
            vault_cards.update().where(vault_cards.c.id == bad).values(wrapped_key=b"\x00" * 60)
        )
    report = await vault.container.vault.rotate(CTX, add_version=True)
    assert report.failed == [bad]
    assert (await _versions(vault))[good] == 2


def test_cli_rotate_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    settings = Settings(data_dir=data_dir)

    async def seed() -> None:
        container = VaultContainer(settings, clock=FixedClock(), gateways={})
        await migrate_vault(container.db)
        await container.start()
        try:
            for number in CARDS:
                card = CardInput(number=number, exp_month=12, exp_year=2034)
                await container.vault.tokenize(card, CTX, client="tests")
        finally:
            await container.stop()

    asyncio.run(seed())
    env = hammerlock_env(data_dir)
    rotated = run_cli(["vault", "rotate-keys", "--batch-size", "3"], env)
    assert rotated.returncode == 0, rotated.stderr
    assert "version 2; re-wrapped 4 data key(s)" in rotated.stdout
    keyring = data_dir / "vault" / "keys" / "kek.json"
    assert [v["version"] for v in json.loads(keyring.read_text())["versions"]] == [1, 2]
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    again = run_cli(["vault", "rotate-keys", "--rewrap-only"], env)
    assert again.returncode == 0, again.stderr
    assert "version 2; re-wrapped 0" in again.stdout
    internal = run_cli(["vault", "rotate-keys", "--internal"], env)
    assert internal.returncode == 0, internal.stderr
    keys = json.loads((data_dir / "secrets" / "vault_internal_keys.json").read_text())["keys"]
    assert len(keys) == 2
    env_kek = base64.b64encode(os.urandom(32)).decode()
    read_only = run_cli(["vault", "rotate-keys"], {**env, "HAMMERLOCK_VAULT_KEK": env_kek})
    assert read_only.returncode == 2
    assert "read-only" in read_only.stderr
    assert env_kek not in read_only.stderr + read_only.stdout
