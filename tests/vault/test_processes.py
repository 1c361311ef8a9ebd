"""Real processes: ``hammerlock serve --vault-port V`` starts the vault beside the API, wires
them together and stops both; ``hammerlock vault serve`` runs one on its own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hammerlock.clock import SystemClock
from hammerlock.vault.client import VaultClient
from hammerlock.vault.signing import InternalKeyring
from tests.servers import (
    HAMMERLOCK,
    Server,
    free_port,
    hammerlock_env,
    last_line,
    run_cli,
    start_server,
    stop_server,
    wait_healthy,
)
from tests.vault.conftest import AMEX

pytestmark = [pytest.mark.processes, pytest.mark.xdist_group("processes")]

CVC = "7391"
TIMEOUT_S = 5.0


def _tokenize(vault_url: str) -> dict[str, object]:
    response = httpx.post(
        vault_url + "/v1/tokens",
        json={"number": AMEX, "exp_month": 12, "exp_year": 2034, "cvc": CVC},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _wait_for_audit(server: Server, admin: str, action: str, timeout_s: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(
            server.base_url + "/v1/audit/events",
            params={"action": action},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=TIMEOUT_S,
        )
        assert response.status_code == 200, response.text
        if events := response.json()["data"]:
            return list(events)
        time.sleep(0.2)
    raise AssertionError(f"no {action} event in the API's audit trail\n{server.describe()}")


def _closed(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    except httpx.TransportError:
        return True
    return False


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, int, dict[str, str]]]:
    env = hammerlock_env(tmp_path / "var")
    vault_port = free_port()
    server = start_server(env, tmp_path / "logs", args=["--vault-port", str(vault_port)])
    try:
        wait_healthy(server)
        yield server, vault_port, env
    finally:
        stop_server(server)


def test_serve_starts_the_vault_beside_the_api_and_stops_it(
    served: tuple[Server, int, dict[str, str]], tmp_path: Path
) -> None:
    server, vault_port, env = served
    vault_url = f"http://127.0.0.1:{vault_port}"
    assert last_line(server.stdout).endswith(f"docs at {server.base_url}/docs")
    assert f"card vault on {vault_url}" in server.stderr
    token = _tokenize(vault_url)
    assert str(token["id"]).startswith("tok_")
    assert httpx.get(vault_url + "/internal/v1/audit/events", timeout=TIMEOUT_S).status_code == 401
    # The API's side of the wiring: the same keyring file, a signed call, a verified answer.
    keyring = InternalKeyring(tmp_path / "var" / "secrets" / "vault_internal_keys.json")

    async def metadata() -> str:
        client = VaultClient(vault_url, keyring, clock=SystemClock())
        try:
            return (await client.tokens(str(token["id"]))).last4
        finally:
            await client.aclose()

    assert asyncio.run(metadata()) == AMEX[-4:]
    created = run_cli(["keys", "create", "--role", "admin", "--name", "e2e"], env)
    assert created.returncode == 0, created.stderr
    (event,) = _wait_for_audit(server, last_line(created.stdout), "vault.tokenize")
    assert event["resource"]["id"] == token["id"]
    assert event["details"]["last4"] == AMEX[-4:]
    # SIGTERM to the group stops both (not SIGKILL). The bound is the shutdown's own budget:
    # uvicorn's graceful shutdown (10 s), then the container's tasks (cancel_and_wait, 10 s),
    # then the vault; 15 s was once exceeded under the full suite's load on 2 cores.
    assert stop_server(server, timeout_s=30) is not None
    assert _closed(vault_port)
    assert _closed(server.port)
    for path in (tmp_path / "var").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert AMEX.encode() not in content, path
            # As a value of its own: four digits also turn up inside random hex ids and hashes
            # (one full-suite run found "7391" in an order id).
            assert not re.search(
                rb"(?<![0-9A-Za-z])" + CVC.encode() + rb"(?![0-9A-Za-z])", content
            ), path
    assert AMEX not in server.stdout + server.stderr
    assert (tmp_path / "var" / "vault" / "vault.db").is_file()
    assert (tmp_path / "var" / "hammerlock.db").is_file()


def test_the_vault_stops_when_the_api_process_dies(
    served: tuple[Server, int, dict[str, str]],
) -> None:
    server, vault_port, _ = served
    os.kill(server.proc.pid, signal.SIGKILL)  # the API alone, not its process group
    server.proc.wait(timeout=TIMEOUT_S)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _closed(vault_port):
        time.sleep(0.1)
    assert _closed(vault_port), "the orphaned vault kept running"


def test_a_vault_elsewhere_and_no_vault(tmp_path: Path) -> None:
    env = hammerlock_env(tmp_path / "var")
    vault_port = free_port()
    vault_url = f"http://127.0.0.1:{vault_port}"
    log = (tmp_path / "vault.log").open("wb")
    vault = subprocess.Popen(
        [HAMMERLOCK, "vault", "serve", "--port", str(vault_port)],
        env=env,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = start_server(
        {**env, "HAMMERLOCK_VAULT_URL": vault_url}, tmp_path / "logs", args=["--vault-port", "1"]
    )
    bare = start_server(
        hammerlock_env(tmp_path / "bare"), tmp_path / "bare-logs", args=["--no-vault"]
    )
    try:
        wait_healthy(server)
        wait_healthy(bare)
        assert f"card vault: {vault_url} (running elsewhere)" in server.stderr
        assert "card vault: off" in bare.stderr
        deadline = time.monotonic() + 15
        while _closed(vault_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        token = _tokenize(vault_url)
        created = run_cli(["keys", "create", "--role", "admin", "--name", "e2e"], env)
        (event,) = _wait_for_audit(server, last_line(created.stdout), "vault.tokenize")
        assert event["resource"]["id"] == token["id"]
    finally:
        stop_server(server)
        stop_server(bare)
        os.killpg(vault.pid, signal.SIGTERM)
        vault.wait(timeout=TIMEOUT_S)
        log.close()
    assert vault.returncode in {0, -signal.SIGTERM}  # uvicorn re-raises the signal it handled
    assert f"card vault on {vault_url}" in (tmp_path / "vault.log").read_text()
