"""``hammerlock vault …``: serve, migrate, rotate-keys; and the embedded vault ``serve`` starts.

Mounted on the main command by :mod:`hammerlock.cli.main` (``app.add_typer(vault_app)``). The
vault's internals are imported inside the commands that use them, so the rest of the CLI never
loads card-handling code (nor fails with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Annotated

import httpx
import typer
from rich.console import Console
from sqlalchemy.engine import make_url

import hammerlock
from hammerlock.audit.model import Actor, Context, Origin
from hammerlock.clock import SystemClock
from hammerlock.logs import configure_logging
from hammerlock.settings import Settings
from hammerlock.vault.sandbox.faults import parse_faults

__all__ = ["start_embedded_vault", "stop_embedded_vault", "vault_app"]

vault_app = typer.Typer(
    help="The card vault: serve, migrate, rotate keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a crash's locals may hold keys and secrets
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

VAULT_READY_TIMEOUT_S = 30.0
VAULT_STOP_TIMEOUT_S = 5.0
_PARENT_POLL_S = 0.5


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _migrate(settings: Settings) -> tuple[int, int]:
    from hammerlock.vault.container import vault_database
    from hammerlock.vault.schema import migrate_vault

    db = vault_database(settings, SystemClock())
    try:
        return await migrate_vault(db)
    finally:
        await db.dispose()


@vault_app.command("migrate")
def migrate_cmd() -> None:
    """Bring the vault database's schema up to date (also done by `vault serve`)."""
    settings = Settings()
    before, after = asyncio.run(_migrate(settings))
    where = _safe_url(settings.effective_vault_database_url)
    out.print(
        f"vault database {where}: schema {before} → {after}"
        if before != after
        else f"vault database {where} is up to date (schema {after})"
    )


def _watch_parent() -> None:
    """Stop this vault when the process that started it is gone (it was SIGKILLed)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="vault-parent-watch", daemon=True).start()


@vault_app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option(help="Interface [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Vault port [default: 8001]")] = None,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate")] = True,
    exit_with_parent: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Run the card vault (migrating its database first)."""
    import uvicorn

    for name, value in (("VAULT_HOST", host), ("VAULT_PORT", port)):
        if value is not None:
            os.environ[f"HAMMERLOCK_{name}"] = str(value)
    settings = Settings()
    parse_faults(settings.sandbox_faults)  # a typo is told here, not as a failed startup
    configure_logging(settings.log_level, settings.log_format)
    if exit_with_parent:
        _watch_parent()
    if migrate_first:
        _, after = asyncio.run(_migrate(settings))
        err.print(
            f"vault database {_safe_url(settings.effective_vault_database_url)} at schema {after}"
        )
    config = uvicorn.Config(
        "hammerlock.vault.factory:app_from_env",
        factory=True,
        host=settings.vault_host,
        port=settings.vault_port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
            await super().startup(sockets=sockets)  # type: ignore[arg-type]
            if self.started:
                err.print(
                    f"hammerlock {hammerlock.__version__} card vault on "
                    f"http://{settings.vault_host}:{settings.vault_port}"
                )

    AnnouncingServer(config).run()


@vault_app.command("rotate-keys")
def rotate_keys_cmd(
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per transaction")] = 500,
    new_version: Annotated[
        bool,
        typer.Option(
            "--new-version/--rewrap-only",
            help="Add a key-encryption key version first (file keyring), or only re-wrap under "
            "the active one (after changing HAMMERLOCK_VAULT_KEK)",
        ),
    ] = True,
    internal: Annotated[
        bool,
        typer.Option(
            "--internal", help="Rotate the API↔vault signing keyring instead (adds a key)"
        ),
    ] = False,
    retire_old: Annotated[
        bool, typer.Option(help="With --internal: older signing keys stop verifying")
    ] = False,
) -> None:
    """Re-wrap every card's data key under a new KEK version, in batches, while the vault runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    configure_logging("warning", "console")
    settings = Settings()
    if internal:
        from hammerlock.vault.signing import InternalKeyring

        keyring = InternalKeyring(settings.effective_vault_internal_key_file)
        key_id = keyring.add_key(retire_others=retire_old)
        out.print(f"internal signing key {key_id} added to {keyring.path}")
        return

    from hammerlock.vault.container import VaultContainer
    from hammerlock.vault.hazmat.envelope import DecryptionFailed
    from hammerlock.vault.hazmat.kek import KeyringError
    from hammerlock.vault.service import RotationReport

    async def body() -> RotationReport:
        await _migrate(settings)
        container = VaultContainer(settings, gateways={})
        try:
            ctx = Context(
                actor=Actor(principal_id=f"cli:{getpass.getuser()}", role="cli"),
                origin=Origin(
                    user_agent=f"hammerlock-cli/{hammerlock.__version__}", node=container.node_name
                ),
            )
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task("re-wrapping data keys", total=None)
                return await container.vault.rotate(
                    ctx,
                    add_version=new_version,
                    batch_size=batch_size,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        finally:
            await container.stop()

    try:
        report = asyncio.run(body())
    except (KeyringError, DecryptionFailed) as exc:  # say what to do, no traceback
        err.print(f"[red]cannot rotate:[/red] {exc}")
        raise typer.Exit(2) from None
    out.print(
        f"active key-encryption key: version {report.active_version}; "
        f"re-wrapped {report.rewrapped:,} data key(s)"
    )
    if report.failed:
        out.print(
            f"[red]{len(report.failed)} record(s) did not unwrap[/red] (tampered?): "
            + ", ".join(report.failed[:20])
        )
        raise typer.Exit(1)


def start_embedded_vault(settings: Settings) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``hammerlock vault serve`` as a child (same process group, stdout/err shared) and
    wait until it answers ``/healthz``; returns the process and its URL."""
    url = f"http://{settings.vault_host}:{settings.vault_port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hammerlock.vault",
            "--host",
            settings.vault_host,
            "--port",
            str(settings.vault_port),
            "--exit-with-parent",
        ],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + VAULT_READY_TIMEOUT_S
    with httpx.Client(base_url=url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the card vault exited during startup (code {proc.returncode})")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    return proc, url
            time.sleep(0.05)
    stop_embedded_vault(proc)
    raise RuntimeError(f"the card vault did not answer on {url} within {VAULT_READY_TIMEOUT_S} s")


def stop_embedded_vault(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=VAULT_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=VAULT_STOP_TIMEOUT_S)
