"""`make demo` as a newcomer runs it: a real ``hammerlock serve --vault-port`` on SQLite, then
``hammerlock demo --api-url … --vault-url …`` with the server's settings. It must finish (exit 0)
well under a minute with its summary, the ledger check and the audit trail's proofs passing; and
without a server it must say to start one."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import (
    Server,
    free_port,
    hammerlock_env,
    run_cli,
    start_server,
    stop_server,
    wait_healthy,
)

pytestmark = [pytest.mark.processes, pytest.mark.xdist_group("processes")]

DEMO_TIMEOUT_S = 90.0  # the demo itself takes about 20 s; this bounds a hang


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, int, dict[str, str]]]:
    env = hammerlock_env(tmp_path / "var")
    vault_port = free_port()
    server = start_server(env, tmp_path / "logs", args=["--vault-port", str(vault_port)])
    try:
        wait_healthy(server, timeout_s=60)
        deadline = time.monotonic() + 30
        while "docs at" not in server.stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        yield server, vault_port, env
    finally:
        stop_server(server)


def test_the_marketplace_day(served: tuple[Server, int, dict[str, str]]) -> None:
    server, vault_port, env = served
    started = time.monotonic()
    done = run_cli(
        [
            "demo",
            "--api-url",
            server.base_url,
            "--vault-url",
            f"http://127.0.0.1:{vault_port}",
        ],
        env,
        timeout_s=DEMO_TIMEOUT_S,
    )
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}\n{server.describe()}"
    assert took < 60, f"the demo took {took:.1f} s\n{out}"

    # The coin: deposits, a soft-close war, 3-D Secure, four eyes, release and payout.
    assert "Beatrix passed 3-D Secure: deposit on lot 1 held" in out
    assert "soft close" in out
    assert "sold for $193,500.00 to Beatrix" in out
    assert "reviewer 2 approves → review approved (2 of 2)" in out
    assert re.search(
        r"1 coin +released +Beatrix +\$193,500 +\$48,375 +\$19,350 +\$0 +"
        r"\$174,150 +\$67,725",
        out,
    ), out
    # The desk misses its reserve; its deposits are voided.
    assert "unsold — the best bid $2,025.00 missed the reserve $3,500.00" in out
    assert re.search(r"2 desk +unsold", out), out
    # The clock: a default, the penalty, the second chance, a dispute with a partial refund.
    assert re.search(r"3 clock +defaulted \(penalty\) +Femi +\$5,300 .* \$800", out), out
    assert re.search(
        r"3 clock, 2nd chance +disputed, released +Elif +\$5,200 +\$1,040 +\$520 +\$1,248 +"
        r"\$3,744 +\$1,248",
        out,
    ), out
    assert (
        "Seller payouts: Ada's Numismatics $174,150.00 paid; Mill Lane Antiques $3,744.00 paid"
        in out
    )
    # The checks, and the final line.
    assert "all invariants hold" in out
    assert "inclusion proof verifies" in out
    assert "are consistent" in out
    assert re.search(
        r"Marketplace day complete in [0-9.]+ s: 3 lots, ledger check passed, audit trail "
        r"verified",
        out,
    ), out


def test_without_a_server_it_says_to_start_one(tmp_path: Path) -> None:
    env = hammerlock_env(tmp_path / "var")
    done = run_cli(["demo", "--api-url", f"http://127.0.0.1:{free_port()}"], env)
    assert done.returncode == 1
    assert "is not answering" in done.stdout
    assert "make run" in done.stdout


def test_run_with_other_settings_it_says_so_and_leaves_no_database_behind(
    served: tuple[Server, int, dict[str, str]], tmp_path: Path
) -> None:
    server, vault_port, _ = served
    elsewhere = tmp_path / "elsewhere"
    done = run_cli(
        [
            "demo",
            "--api-url",
            server.base_url,
            "--vault-url",
            f"http://127.0.0.1:{vault_port}",
        ],
        hammerlock_env(elsewhere / "var"),
        timeout_s=DEMO_TIMEOUT_S,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"no hammerlock database at {elsewhere / 'var' / 'hammerlock.db'}" in done.stdout
    assert "same HAMMERLOCK_* settings" in done.stdout
    assert not elsewhere.exists()
