"""Card data at rest: the number only as ciphertext, the CVC nowhere (PCI DSS 3.3.1, 3.5.1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    CardData,
    Charge,
    ChargeStatus,
    Gateway,
    VaultToken,
)
from hammerlock.vault.client import VaultGateway
from tests.vault.conftest import AMEX, Vault

CVC = "7391"  # amex: four digits, rare enough in random bytes to search for


@pytest.fixture
def backend() -> str:
    return "sqlite"  # files we can read back byte for byte


class Keeper:
    name = "keeper"

    def __init__(self) -> None:
        self.cards: list[CardData] = []

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        assert isinstance(request.source, CardData)
        self.cards.append(request.source)
        return Charge(
            gateway=self.name,
            gateway_key=request.gateway_key,
            charge_id="ch_1",
            status=ChargeStatus.AUTHORIZED,
            amount=request.amount,
            currency=request.currency,
        )


@pytest.fixture
def keeper() -> Keeper:
    return Keeper()


@pytest.fixture
def vault_gateways(keeper: Keeper) -> dict[str, Gateway]:
    return {"keeper": keeper}  # type: ignore[dict-item]  # authorize is all this test calls


def _files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        yield from (p for p in root.rglob("*") if p.is_file())


def _assert_nowhere(needles: list[bytes], roots: list[Path], extra: str = "") -> None:
    scanned = 0
    for path in _files(*roots):
        content = path.read_bytes()
        scanned += 1
        for needle in needles:
            assert needle not in content, f"{needle!r} found in {path}"
    for needle in needles:
        assert needle.decode() not in extra
    assert scanned >= 3  # the vault database, its WAL, the keyring at least


async def test_neither_the_number_nor_the_cvc_is_written_anywhere(
    vault: Vault, keeper: Keeper, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    token = str((await vault.tokenize(AMEX, cvc=CVC, name="Card Holder"))["id"])
    needles = [AMEX.encode(), CVC.encode(), b"Card Holder"]
    # While the CVC is held (in memory) ...
    captured = capfd.readouterr()
    _assert_nowhere(needles, [tmp_path], captured.out + captured.err)
    # ... and after it was used and forgotten.
    await VaultGateway(vault.client, "keeper").authorize(
        AuthorizeRequest("pi_1_a1", 100, "USD", VaultToken(token))
    )
    assert (keeper.cards[0].number, keeper.cards[0].cvc) == (AMEX, CVC)
    assert len(vault.container.vault.cvc) == 0
    captured = capfd.readouterr()
    _assert_nowhere(needles, [tmp_path], captured.out + captured.err)
    assert AMEX not in repr(vault.container.vault.cvc)
