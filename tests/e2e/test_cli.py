"""The ``hammerlock`` command, run as a user runs it: a subprocess with its own data dir.

The embedded SQLite default throughout (``HAMMERLOCK_DATA_DIR`` = a temp dir, no database URL,
no pepper: the pepper file in the data dir is what the CLI and the server share); one PostgreSQL
case for ``migrate``. Servers run on free ports and are always stopped (tests/servers.py).
"""

from __future__ import annotations

import re
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import sqlalchemy.exc as sa_exc

from hammerlock.cli.errors import explain
from hammerlock.cli.main import app
from hammerlock.clock import FixedClock
from hammerlock.db.engine import Database, create_database
from hammerlock.db.migrate import migrate
from hammerlock.ledger import service as ledger_service
from hammerlock.ledger.model import AccountFlag, AccountInput, TransferInput
from hammerlock.security.keys import parse_key
from hammerlock.settings import Settings
from hammerlock.vault.cli import vault_app
from tests.conftest import PG_URL, pg_url, require_service
from tests.servers import (
    READY_TIMEOUT_S,
    Server,
    free_port,
    hammerlock_env,
    last_line,
    run_cli,
    start_server,
    stop_server,
    wait_healthy,
)

KEY_LINE = re.compile(r"^hl_[a-z0-9]{16}_[A-Za-z0-9_-]{20,}$")
HTTP_TIMEOUT_S = 5.0
STOP_WITHIN_S = 5.0


@dataclass
class Served:
    """A running ``hammerlock serve`` and the environment of CLI calls against its data dir."""

    server: Server
    env: dict[str, str]
    admin: str

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.server.base_url + path, headers=headers, timeout=HTTP_TIMEOUT_S)

    def create_key(self, *args: str) -> str:
        return _create_key(self.env, *args)


def _create_key(env: dict[str, str], *args: str) -> str:
    created = run_cli(["keys", "create", *args], env)
    assert created.returncode == 0, created.stderr
    return last_line(created.stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the key tests: ``serve`` migrates its fresh data dir on the way up.
    (``--vault-port N`` is accepted; the vault itself is not part of this release yet.)"""
    root = tmp_path_factory.mktemp("served")
    env = hammerlock_env(root / "var")
    server = start_server(env, root / "logs", args=["--vault-port", str(free_port())])
    try:
        wait_healthy(server)
        # Only now: a first CLI call racing the server's first start can read the data dir's
        # pepper file before it is written, i.e. empty (bootstrap._secret_file).
        admin = _create_key(env, "--role", "admin", "--name", "fixture admin")
        yield Served(server=server, env=env, admin=admin)
    finally:
        stop_server(server)


def _key_id(key: str) -> str:
    parsed = parse_key(key)
    assert parsed is not None, key
    return parsed.key_id


def _secret(key: str) -> str:
    parsed = parse_key(key)
    assert parsed is not None, key
    return parsed.secret


# --- migrate ------------------------------------------------------------------------------------


def test_migrate_creates_the_database_under_the_data_dir_and_is_idempotent(
    tmp_path: Path,
) -> None:
    env = hammerlock_env(tmp_path / "var")
    first = run_cli(["migrate"], env)
    assert first.returncode == 0, first.stderr
    assert "migrated" in first.stdout
    assert (tmp_path / "var" / "hammerlock.db").is_file()
    second = run_cli(["migrate"], env)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert "migrated" not in second.stdout


@pytest.fixture
async def empty_pg_url() -> AsyncIterator[str]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"hl_cli_migrate_{time.monotonic_ns()}"
    admin = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield pg_url(name)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@pytest.mark.postgres
def test_migrate_on_postgresql_is_idempotent(empty_pg_url: str, tmp_path: Path) -> None:
    env = hammerlock_env(tmp_path / "var", database_url=empty_pg_url)
    first = run_cli(["migrate"], env)
    assert first.returncode == 0, first.stderr
    assert "migrated postgresql+asyncpg://" in first.stdout
    second = run_cli(["migrate"], env)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert not (tmp_path / "var" / "hammerlock.db").exists()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("settings", "says", "next_step"),
    [
        (
            {"database_url": pg_url("hl_cli_no_such_database")},
            "'hl_cli_no_such_database' does not exist",
            "createdb hl_cli_no_such_database",
        ),
        (
            {"database_url": PG_URL.replace("+asyncpg", "")},
            "no database driver 'psycopg'",
            "postgresql+asyncpg://",
        ),
        (
            {"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/test"},
            "could not connect",
            "HAMMERLOCK_DATABASE_URL",
        ),
        ({"log_level": "verbose"}, "HAMMERLOCK_LOG_LEVEL: Input should be", "configuration.md"),
        (
            {"webhook_url": "https://example.com/hook"},
            "HAMMERLOCK_WEBHOOK_URL needs HAMMERLOCK_WEBHOOK_SECRET",
            "Next:",
        ),
    ],
)
def test_a_startup_mistake_is_told_in_a_few_lines_with_what_to_do_next(
    tmp_path: Path, settings: dict[str, str], says: str, next_step: str
) -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    result = run_cli(["migrate"], hammerlock_env(tmp_path / "var", **settings))
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert next_step in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4, result.stderr


def test_a_typo_in_the_sandbox_faults_stops_the_vault_in_a_few_lines(tmp_path: Path) -> None:
    env = hammerlock_env(tmp_path / "var", sandbox_faults="bogus:2")
    result = run_cli(["vault", "serve", "--port", str(free_port())], env)
    assert result.returncode == 2, result.stderr
    assert "HAMMERLOCK_SANDBOX_FAULTS: fault 'bogus:2': unknown name" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4, result.stderr


@pytest.mark.parametrize("args", [["ledger", "check"], ["keys", "list"], ["audit", "verify"]])
def test_a_command_run_away_from_its_database_says_so_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    result = run_cli(args, hammerlock_env(tmp_path / "var"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"no hammerlock database at {tmp_path / 'var' / 'hammerlock.db'}" in result.stderr
    assert "hammerlock migrate" in result.stderr
    assert not (tmp_path / "var").exists()


def test_a_bug_keeps_its_traceback_without_local_variables() -> None:
    assert explain(RuntimeError("a bug")) is None

    class Orig(Exception):
        pass

    # a database error a command meets while running is a bug's, not a setting's
    running = sa_exc.IntegrityError("INSERT", {}, Orig("duplicate key value violates unique"))
    assert explain(running) is None
    assert explain(sa_exc.ProgrammingError("SELECT", {}, Orig('column "x" does not exist'))) is None
    # …nor is a bug raised while such an error was being handled
    bug = KeyError("missing")
    bug.__context__ = sa_exc.DBAPIError("SELECT", {}, Orig("could not connect to server"))
    assert explain(bug) is None
    assert explain(sa_exc.DBAPIError("c", {}, Orig('password authentication failed for user "x"')))
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
        except OSError as exc:
            raise RuntimeError("while starting") from exc
    except RuntimeError as wrapped:
        told = explain(wrapped)
    assert told is not None
    assert told.startswith("could not connect")
    assert app.pretty_exceptions_show_locals is False
    assert vault_app.pretty_exceptions_show_locals is False


# --- serve --------------------------------------------------------------------------------------


def test_serve_names_the_docs_url_on_its_last_startup_line_and_serves_docs(
    served: Served,
) -> None:
    base = served.server.base_url
    assert f"{base}/docs" in last_line(served.server.stdout), served.server.describe()
    assert served.get("/healthz").json() == {"status": "ok"}
    assert served.get("/readyz").status_code == 200
    docs = served.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert not re.search(r"""(src|href)=["']https?://""", docs.text), "docs load a remote asset"
    assert served.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert served.get("/openapi.json").json()["openapi"].startswith("3.1")


def test_serve_on_a_taken_port_exits_without_announcing_the_docs(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(hammerlock_env(tmp_path / "var"), tmp_path / "logs", port=port)
        try:
            code = server.proc.wait(timeout=READY_TIMEOUT_S)
        finally:
            stop_server(server)
    assert code != 0, server.describe()
    assert "address already in use" in server.stderr, server.describe()
    assert "/docs" not in server.stdout, server.describe()


def _assert_stops(server: Server, sig: signal.Signals) -> None:
    server.proc.send_signal(sig)
    code = server.proc.wait(timeout=STOP_WITHIN_S)  # the caller's `finally` kills a straggler
    # uvicorn shuts down gracefully, then re-raises the signal: the shell sees 143 or 130.
    assert code in {0, -sig, 128 + sig}, server.describe()
    assert "Traceback" not in server.stderr, server.describe()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.base_url + "/healthz", timeout=HTTP_TIMEOUT_S)


def test_two_servers_with_their_own_data_dirs_share_nothing_and_stop_on_a_signal(
    tmp_path: Path,
) -> None:
    """One gets ``--no-vault`` then SIGTERM; the other ``--vault-port N`` then SIGINT."""
    envs = [hammerlock_env(tmp_path / name) for name in ("a", "b")]
    servers = [
        start_server(env, tmp_path / f"{i}-logs", args=args)
        for i, (env, args) in enumerate(
            zip(envs, (["--no-vault"], ["--vault-port", str(free_port())]), strict=True)
        )
    ]
    try:
        for server in servers:
            wait_healthy(server)
        created = run_cli(["keys", "create", "--role", "admin", "--name", "a's admin"], envs[0])
        assert created.returncode == 0, created.stderr
        headers = {"Authorization": f"Bearer {last_line(created.stdout)}"}
        a, b = (
            httpx.get(s.base_url + "/v1/keys", headers=headers, timeout=HTTP_TIMEOUT_S)
            for s in servers
        )
        assert a.status_code == 200, a.text
        assert b.status_code == 401, b.text  # b has its own database and its own pepper
        _assert_stops(servers[0], signal.SIGTERM)
        _assert_stops(servers[1], signal.SIGINT)
    finally:
        for server in servers:
            stop_server(server)
    files = [tmp_path / name / "hammerlock.db" for name in ("a", "b")]
    assert all(f.is_file() for f in files)
    assert not files[0].samefile(files[1])
    peppers = [(tmp_path / name / "secrets" / "api_key_pepper").read_text() for name in "ab"]
    assert peppers[0] != peppers[1]


# --- keys ---------------------------------------------------------------------------------------


def test_keys_create_prints_the_key_alone_on_its_last_line_and_it_authenticates(
    served: Served,
) -> None:
    created = run_cli(["keys", "create", "--role", "admin", "--name", "x"], served.env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[-1]
    assert KEY_LINE.match(key), created.stdout
    assert _secret(key) not in created.stderr
    listed = served.get("/v1/keys", key)
    assert listed.status_code == 200, listed.text
    mine = [k for k in listed.json()["data"] if k["id"] == _key_id(key)]
    assert [(k["role"], k["name"]) for k in mine] == [("admin", "x")]
    assert mine[0]["principal_id"].startswith("prn_")  # a fresh principal of its own
    assert served.get("/v1/keys").status_code == 401
    assert served.get("/v1/keys", key[:-1] + ("A" if key[-1] != "A" else "B")).status_code == 401


def test_keys_create_with_principal_binds_the_key_to_it(served: Served) -> None:
    bidder = served.create_key("--role", "bidder", "--name", "b", "--principal", "bidder:42")
    listed = {k["id"]: k for k in served.get("/v1/keys", served.admin).json()["data"]}
    assert listed[_key_id(bidder)]["principal_id"] == "bidder:42"
    assert listed[_key_id(bidder)]["role"] == "bidder"
    assert served.get("/v1/keys", bidder).status_code == 403  # authenticated, not allowed


def test_keys_list_shows_every_id_in_full_and_never_a_secret(served: Served) -> None:
    keys = [
        served.admin,
        served.create_key("--role", "service", "--name", "[/] markup-like", "--principal", "svc:1"),
    ]
    listed = run_cli(["keys", "list"], served.env)
    assert listed.returncode == 0, listed.stderr
    output = listed.stdout + listed.stderr
    for key in keys:
        assert _secret(key) not in output
        assert _secret(key)[:8] not in output
        assert _key_id(key) in output  # whole, so it can be pasted into `keys revoke`
    assert "hl_" not in output
    assert "[/] markup-like" in listed.stdout  # a name is data, not Rich markup


def test_a_revoked_key_gets_401(served: Served) -> None:
    key = served.create_key("--role", "admin", "--name", "to revoke")
    assert served.get("/v1/keys", key).status_code == 200
    revoked = run_cli(["keys", "revoke", _key_id(key)], served.env)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {_key_id(key)}" in revoked.stdout
    denied = served.get("/v1/keys", key)
    assert denied.status_code == 401, denied.text
    assert denied.json()["code"] == "unauthenticated"


def test_revoking_an_unknown_id_exits_1_with_a_readable_message(served: Served) -> None:
    key_id = "key_[bold]unknown"  # printed as typed: not read as Rich markup
    revoked = run_cli(["keys", "revoke", key_id], served.env)
    assert revoked.returncode == 1
    assert f"no key '{key_id}'" in revoked.stderr
    assert "Traceback" not in revoked.stderr
    assert len(revoked.stderr.splitlines()) <= 3, revoked.stderr


# --- ledger check -------------------------------------------------------------------------------


async def _migrated(data_dir: Path) -> Database:
    db = create_database(Settings(data_dir=data_dir), FixedClock())
    await migrate(db)
    return db


async def _post_one_transfer(db: Database) -> None:
    async with db.transaction() as uow:
        accounts = [
            AccountInput("cash", "USD", "cash", AccountFlag(0), "{}"),
            AccountInput("wallet", "USD", "wallet", AccountFlag(0), "{}"),
        ]
        await ledger_service.create_accounts(uow, None, accounts)
        transfer = TransferInput("t1", "cash", "wallet", 1250, "USD", "top_up")
        assert await ledger_service.post(uow, [transfer]) == ["ok"]


async def test_ledger_check_passes_on_a_sound_ledger_and_names_a_tampered_account(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    env = hammerlock_env(data_dir)
    db = await _migrated(data_dir)
    try:
        fresh = run_cli(["ledger", "check"], env)
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        assert "checked 0 transfers in 0 currencies: all invariants hold" in fresh.stdout
        await _post_one_transfer(db)
    finally:
        await db.dispose()

    conn = sqlite3.connect(data_dir / "hammerlock.db")
    try:
        with conn:  # commits
            conn.execute("UPDATE ledger_accounts SET credits_posted = 1300 WHERE id = 'wallet'")
    finally:
        conn.close()
    tampered = run_cli(["ledger", "check"], env)
    assert tampered.returncode != 0
    assert "checked 1 transfers" in tampered.stdout, tampered.stdout
    assert "account wallet" in tampered.stdout
    assert "account cash" not in tampered.stdout  # only the tampered account is named
