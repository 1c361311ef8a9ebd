"""The ``hammerlock`` command: serve, migrate, keys, ledger, audit, demo.

Commands that touch the database act as the local operator (``cli:<user>``) and are audited
like any other actor. Settings come from ``HAMMERLOCK_*`` variables; flags override them.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import hammerlock
from hammerlock.audit import service as audit
from hammerlock.audit.model import Actor, Context, Origin
from hammerlock.cli.errors import run
from hammerlock.clock import SystemClock, format_rfc3339
from hammerlock.db.engine import Database, create_database
from hammerlock.db.migrate import MigrationResult, current_revision, head_revision, migrate
from hammerlock.logs import configure_logging
from hammerlock.security import service as keys_service
from hammerlock.security.errors import KeyNotFound
from hammerlock.security.keys import ApiKey
from hammerlock.security.permissions import Role
from hammerlock.settings import Settings
from hammerlock.vault.cli import start_embedded_vault, stop_embedded_vault, vault_app

if TYPE_CHECKING:
    from hammerlock.audit.sinks.archive import ArchiveStore
    from hammerlock.audit.verify import Report, TrustAnchor
    from hammerlock.bootstrap import Container

__all__ = ["app", "main"]

app = typer.Typer(
    name="hammerlock",
    help="Payments and trust backbone for online auction marketplaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a crash's locals may hold keys and secrets
)
keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
app.add_typer(audit_app, name="audit")
app.add_typer(vault_app, name="vault")
payments_app = typer.Typer(help="Payment intents: the janitor.", no_args_is_help=True)
app.add_typer(payments_app, name="payments")

# soft_wrap: lines are never broken at 80 columns when piped, so URLs, paths and keys stay whole.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")
# A table printed to a pipe gets its natural width (up to this), not 80 columns: ids must reach
# `keys revoke` whole, not cut to `key_9yyrn…`.
_PIPED_TABLE_WIDTH = 1_000


def _settings() -> Settings:
    return Settings()


def _existing_database(settings: Settings) -> Settings:
    """``settings``, once its SQLite database file exists: a command that needs the schema
    says where it looked instead of creating an empty database (and a data dir, and a pepper)
    wherever it was run."""
    missing = settings.missing_sqlite_file
    if missing is not None:
        err.print(
            f"[red]no hammerlock database at {escape(str(missing))}.[/red] Run this where the "
            "server runs, with the same HAMMERLOCK_* settings (HAMMERLOCK_DATA_DIR defaults to "
            "./var), or create it first: [bold]hammerlock migrate[/bold]."
        )
        raise typer.Exit(2)
    return settings


@dataclass
class _DatabaseOnly:
    """What ``audit verify`` needs of a container: settings, the database, the node name —
    without importing and building the whole app (a second saved on every run)."""

    settings: Settings
    db: Database
    node_name: str


def _run_database(body: Callable[[_DatabaseOnly], Awaitable[T]]) -> T:
    configure_logging("warning", "console")

    settings = _existing_database(_settings())

    async def main() -> T:
        light = _DatabaseOnly(
            settings,
            create_database(settings, SystemClock()),
            settings.node_name or socket.gethostname()[:64],
        )
        try:
            if await current_revision(light.db) != head_revision():
                err.print(
                    "[red]the database schema is not up to date.[/red] "
                    "Run [bold]hammerlock migrate[/bold] first."
                )
                raise typer.Exit(2)
            return await body(light)
        finally:
            await light.db.dispose()

    return asyncio.run(main())


def _cli_context(container: Container | _DatabaseOnly) -> Context:
    return Context(
        actor=Actor(principal_id=f"cli:{getpass.getuser()}", role="cli", key_id=None),
        origin=Origin(
            ip=None, user_agent=f"hammerlock-cli/{hammerlock.__version__}", node=container.node_name
        ),
    )


def _run(body: Callable[[Container], Awaitable[T]], *, needs_schema: bool = True) -> T:
    configure_logging("warning", "console")

    from hammerlock.bootstrap import Container

    settings = _existing_database(_settings()) if needs_schema else _settings()

    async def main() -> T:
        container = Container(settings, background=False)
        try:
            if needs_schema and await current_revision(container.db) != head_revision():
                err.print(
                    "[red]the database schema is not up to date.[/red] "
                    "Run [bold]hammerlock migrate[/bold] first."
                )
                raise typer.Exit(2)
            return await body(container)
        finally:
            await container.db.dispose()

    return asyncio.run(main())


async def _migrate(container: Container) -> MigrationResult:
    result = await migrate(container.db)
    if result.changed:
        async with container.db.transaction() as uow:
            await audit.record(
                uow,
                _cli_context(container).event(
                    "db.migrate",
                    resource_type="schema",
                    resource_id=result.after,
                    ts_us=uow.clock.now_us(),
                    details={"from": result.before, "to": result.after},
                ),
            )
    return result


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.effective_database_url).render_as_string(hide_password=True)


@app.command("migrate")
def migrate_cmd() -> None:
    """Bring the database schema up to date (also done by `serve`)."""
    result = _run(_migrate, needs_schema=False)
    settings = _settings()
    if result.changed:
        out.print(f"migrated {_safe_url(settings)}: {result.before or 'empty'} → {result.after}")
    else:
        out.print(f"{_safe_url(settings)} is up to date (revision {result.after})")


@app.command("serve")
def serve_cmd(  # noqa: PLR0917 - Typer maps parameters to flags
    host: Annotated[str | None, typer.Option(help="Interface to bind [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="API port [default: 8000]")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="API worker processes")] = 1,
    vault_port: Annotated[int | None, typer.Option(help="Card vault port [default: 8001]")] = None,
    no_vault: Annotated[
        bool, typer.Option("--no-vault", help="Do not start the card vault")
    ] = False,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate")] = True,
) -> None:
    """Run the API (migrating first) and the card vault beside it.

    The startup lines end with the docs URL; JSON log lines follow.
    """
    for name, value in (("HOST", host), ("PORT", port), ("VAULT_PORT", vault_port)):
        if value is not None:
            os.environ[f"HAMMERLOCK_{name}"] = str(value)
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    if migrate_first:
        result = _run(_migrate, needs_schema=False)
        err.print(f"database {_safe_url(settings)} at revision {result.after}")
    vault = None
    if settings.vault_url:
        err.print(f"card vault: {settings.vault_url} (running elsewhere)")
    elif no_vault:
        err.print("card vault: off (--no-vault); payments need one (HAMMERLOCK_VAULT_URL)")
    else:
        try:
            vault, vault_url = start_embedded_vault(settings)  # stopped in the finally below
        except RuntimeError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        os.environ["HAMMERLOCK_VAULT_URL"] = vault_url
        err.print(f"card vault on {vault_url} (pid {vault.pid})")
    try:
        _serve_api(settings, workers)
    finally:
        stop_embedded_vault(vault)


def _serve_api(settings: Settings, workers: int) -> None:
    import uvicorn

    base = f"http://{settings.host}:{settings.port}"
    config = uvicorn.Config(
        "hammerlock.api.factory:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )

    def announce() -> None:
        out.print(
            "admin key: hammerlock keys create --role admin --name <you>   (or: make admin-key)"
        )
        out.print(f"hammerlock {hammerlock.__version__} API on {base} · docs at {base}/docs")
        sys.stdout.flush()

    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        sock = config.bind_socket()  # exits if the port is taken, before the announcement
        announce()  # connections queue on the bound socket until the workers accept them
        Multiprocess(config, sockets=[sock]).run()
        return

    class AnnouncingServer(uvicorn.Server):
        """Names the docs URL once it serves them: never for a port it failed to bind."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # listening, and the app's lifespan startup succeeded
                announce()

    AnnouncingServer(config).run()


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="One of: " + ", ".join(r.value for r in Role))],
    name: Annotated[str, typer.Option(help="Who or what the key is for")],
    principal: Annotated[
        str | None, typer.Option(help="Bind the key to this principal id (default: a new one)")
    ] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Expire after N days (default: never)")
    ] = None,
) -> None:
    """Create a key. The key is printed once: the last line of standard output."""
    if not 1 <= len(name) <= 200:
        raise typer.BadParameter("1 to 200 characters", param_hint="--name")

    async def body(container: Container) -> keys_service.CreatedKey:
        await _migrate(container)
        async with container.db.transaction() as uow:
            expires_us = (
                None
                if expires_in_days is None
                else uow.clock.now_us()
                + int(timedelta(days=expires_in_days).total_seconds()) * 1_000_000
            )
            return await keys_service.create_key(
                uow,
                _cli_context(container),
                pepper=container.pepper,
                role=role,
                name=name,
                principal_id=principal,
                expires_us=expires_us,
            )

    created = _run(body, needs_schema=False)
    err.print(
        f"created {created.key.id} (role {created.key.role.value}, principal "
        f"{created.key.principal_id}); store the key now, it is not shown again:"
    )
    out.print(created.plaintext, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(limit: Annotated[int, typer.Option(min=1, max=1000)] = 100) -> None:
    """List keys (never their secrets)."""

    async def body(container: Container) -> list[ApiKey]:
        async with container.db.transaction(write=False) as uow:
            return await keys_service.list_keys(uow, after=None, limit=limit)

    table = Table()
    table.add_column("id", no_wrap=True)  # on a narrow terminal, the other columns give way
    for heading in ("role", "principal", "name", "created", "expires", "revoked"):
        table.add_column(heading)
    for k in _run(body):
        table.add_row(  # names and ids are data, not Rich markup (a name "[/]" would raise)
            escape(k.id),
            k.role.value,
            escape(k.principal_id),
            escape(k.name),
            format_rfc3339(k.created_us),
            format_rfc3339(k.expires_us) if k.expires_us else "-",
            format_rfc3339(k.revoked_us) if k.revoked_us else "-",
        )
    (out if out.is_terminal else Console(width=_PIPED_TABLE_WIDTH)).print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_…)")]) -> None:
    """Revoke a key; requests with it fail from now on."""

    async def body(container: Container) -> ApiKey:
        async with container.db.transaction() as uow:
            return await keys_service.revoke_key(uow, _cli_context(container), key_id)

    try:
        key = _run(body)
    except KeyNotFound:
        err.print(f"[red]no key {escape(repr(key_id))}[/red]: see `hammerlock keys list`")
        raise typer.Exit(1) from None
    out.print(f"revoked {key.id} at {format_rfc3339(key.revoked_us or 0)}")


@ledger_app.command("check")
def ledger_check(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Mismatches to list")] = 20,
) -> None:
    """Recompute invariants 1-4 from the transfers; exit 1 naming the first broken account."""
    from hammerlock.ledger.check import run_check

    report = _run(lambda c: run_check(c.db, limit=limit))
    for line in report.lines():
        out.print(line, highlight=False)
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("verify")
def audit_verify(
    public_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--public-key",
            help="A tree-head signing public key held out of band (PEM, or base64 of the raw 32 "
            "bytes); repeat for rotated keys. Default: trust the keys in the database.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Processes that check rows; 1 checks them in this process [default: CPUs - 1, "
            "1 to 8: this process rebuilds the tree meanwhile]",
        ),
    ] = max(1, min((os.cpu_count() or 1) - 1, 8)),
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive",
            metavar="DIR|s3://BUCKET/PREFIX",
            help="Check an archive of sealed segments on its own instead of the database (with "
            "--public-key no database is opened).",
        ),
    ] = None,
) -> None:
    """Re-hash every audit event, rebuild the Merkle tree, check every signed tree head;
    exit 1 naming the first bad seq (or tree head) if anything was changed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from hammerlock.audit import verify as audit_verify_module
    from hammerlock.audit.signing import load_public_key

    anchor = None
    if public_key:
        keys = []
        for path in public_key:
            try:
                keys.append(load_public_key(path.read_bytes()))
            except ValueError as exc:
                raise typer.BadParameter(
                    f"{path}: not an Ed25519 public key ({exc})", param_hint="--public-key"
                ) from None
        anchor = audit_verify_module.TrustAnchor.out_of_band(
            keys, ", ".join(str(p) for p in public_key)
        )
    if archive is not None:
        _audit_verify_archive(archive, anchor)

    async def body(container: _DatabaseOnly) -> audit_verify_module.Report:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("verifying the audit log", total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            workers = audit_verify_module.Workers(container.settings, jobs)
            report = await audit_verify_module.verify(
                container.db, anchor=anchor, progress=progress, workers=workers
            )
        async with container.db.transaction() as uow:
            await audit_verify_module.record_result(
                uow, _cli_context(container), report, out_of_band=anchor is not None
            )
        return report

    started = time.perf_counter()
    report = _run_database(body)
    elapsed_s = time.perf_counter() - started
    out.print(f"trust anchor: {escape(report.anchor)}", highlight=False)
    out.print(
        f"checked {report.events:,} events, {report.heads:,} signed tree heads and "
        f"{report.tiles:,} tiles in {elapsed_s:.1f} s",
        highlight=False,
    )
    if report.ok:
        out.print(
            "[green]intact[/green]: every event hashes to its leaf, the rebuilt tree matches "
            "every signed tree head, and consecutive heads are consistent",
            highlight=False,
        )
        if report.unsigned_tail:
            out.print(
                f"{report.unsigned_tail:,} newest event(s) are not yet covered by a signed tree "
                "head (heads are signed about every second while events arrive)",
                highlight=False,
            )
        raise typer.Exit(0)
    _print_problems(report)
    raise typer.Exit(1)


def _audit_verify_archive(location: str, anchor: TrustAnchor | None) -> None:
    """``audit verify --archive``: the archive's segments and heads, without the database when
    the trust anchor is given out of band."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from hammerlock.audit.archive_verify import ArchiveReport, verify_archive
    from hammerlock.audit.verify import TrustAnchor

    configure_logging("warning", "console")
    settings = _settings()
    store = _archive_store(location, settings)

    async def check(trust: TrustAnchor) -> ArchiveReport:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("verifying archived segments", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return await verify_archive(store, anchor=trust, progress=progress)

    async def with_database_keys(container: Container) -> ArchiveReport:
        from hammerlock.audit import storage as audit_storage

        async with container.db.transaction(write=False) as uow:
            keys = await audit_storage.signing_keys(uow)
        return await check(TrustAnchor.from_database(keys))

    started = time.perf_counter()
    try:
        result = _run(with_database_keys) if anchor is None else asyncio.run(check(anchor))
    except OSError as exc:
        err.print(f"[red]cannot read the archive[/red] {escape(location)}: {escape(str(exc))}")
        raise typer.Exit(2) from None
    elapsed_s = time.perf_counter() - started
    report = result.report
    out.print(f"trust anchor: {escape(report.anchor)}", highlight=False)
    out.print(
        f"checked {result.segments:,} segments, {report.events:,} events and "
        f"{report.heads:,} signed tree heads in {elapsed_s:.1f} s",
        highlight=False,
    )
    if result.heads_beyond:
        out.print(
            f"{result.heads_beyond:,} head(s) sign more events than the archive holds yet: "
            "signature checked, root not",
            highlight=False,
        )
    if report.ok:
        out.print(
            "[green]intact[/green]: every archived event hashes to its leaf, segments follow "
            "each other without gap, and the rebuilt tree matches every signed tree head",
            highlight=False,
        )
        raise typer.Exit(0)
    _print_problems(report)
    raise typer.Exit(1)


def _archive_store(location: str, settings: Settings) -> ArchiveStore:
    from hammerlock.audit.sinks.archive import LocalArchiveStore

    if not location.startswith("s3://"):
        path = Path(location)
        if not path.is_dir():
            raise typer.BadParameter(f"{location} is not a folder", param_hint="--archive")
        return LocalArchiveStore(path)
    from hammerlock.audit.sinks.archive_s3 import S3ArchiveStore

    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise typer.BadParameter("s3://BUCKET/PREFIX needs a bucket", param_hint="--archive")
    return S3ArchiveStore(
        bucket,
        prefix=prefix,
        endpoint_url=settings.audit_archive_s3_endpoint_url,
        region=settings.audit_archive_s3_region,
    )


def _print_problems(report: Report) -> None:
    first = report.first_problem
    out.print(f"[red]TAMPERED[/red]: {escape(str(first))}", highlight=False)
    for problem in report.problems[1:]:
        out.print(f"  {escape(str(problem))}", highlight=False)
    if report.problem_count > len(report.problems):
        out.print(f"  … and {report.problem_count - len(report.problems):,} more", highlight=False)


@app.command("demo")
def demo_cmd(
    api_url: Annotated[
        str, typer.Option("--api-url", help="The running API")
    ] = "http://127.0.0.1:8000",
    vault_url: Annotated[
        str, typer.Option("--vault-url", help="Its card vault")
    ] = "http://127.0.0.1:8001",
) -> None:
    """A marketplace day against the running server, in under a minute (`make run` first).

    Parties, cards, three lots, bids, escrow, a default, a dispute, payouts; then the ledger
    check and the audit trail's signed heads and proofs. Use the server's HAMMERLOCK_* settings:
    it mints its own keys.
    """
    from hammerlock.cli.marketplace_demo import run

    raise typer.Exit(run(api_url, vault_url))


@app.command("version")
def version_cmd() -> None:
    """Print the version."""
    out.print(hammerlock.__version__)


@payments_app.command("janitor")
def payments_janitor(
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep running, one pass per janitor interval")
    ] = False,
) -> None:
    """Resolve payments left `processing` (asking the gateway by their key), poll 3-D Secure
    challenges, expire open reviews and lapsing authorizations, finish pending refunds."""

    async def body(container: Container) -> None:
        ctx = Context.system("payments-janitor", node=container.node_name)
        while True:
            counts = await container.payments.janitor_pass(ctx)
            line = ", ".join(f"{name} {count}" for name, count in counts.items())
            out.print(f"payments janitor: {line}")
            if not watch:
                return
            await asyncio.sleep(container.settings.payments_janitor_interval_s)

    _run(body)


def main() -> None:
    """The ``hammerlock`` console script: a wrong setting or a missing database is told in one
    line with what to do next (exit code 2)."""
    run(app)
