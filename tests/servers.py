"""Real hammerlock processes for tests: the CLI, and servers on free ports.

Every wait is bounded. A server runs in its own session (process group), so stopping it stops
everything it started (uvicorn workers, later the vault); tests stop it in a ``finally`` with
SIGTERM, then SIGKILL if it does not exit in time. Its standard output and error go to files
(never pipes, which could fill up and block the server) that tests read afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "HAMMERLOCK",
    "READY_TIMEOUT_S",
    "Server",
    "cluster",
    "free_port",
    "hammerlock_env",
    "last_line",
    "run_cli",
    "start_server",
    "stop_server",
    "wait_healthy",
]

HAMMERLOCK = str(Path(sys.executable).with_name("hammerlock"))
CLI_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
_POLL_S = 0.05
# Output is read by tests as a pipe would be by a script: no terminal size leaks in from the
# shell that runs pytest.
_TERMINAL_VARS = frozenset({"COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE"})


def free_port() -> int:
    """A port the kernel just handed out (another process may still take it: rare, and the
    server then exits at once, which :func:`wait_healthy` reports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hammerlock_env(
    data_dir: Path, *, database_url: str | None = None, pepper: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment of a hammerlock process: this one's, minus any ``HAMMERLOCK_*`` and
    terminal size."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HAMMERLOCK_") and k not in _TERMINAL_VARS
    }
    env.update(
        HAMMERLOCK_DATA_DIR=str(data_dir), HAMMERLOCK_LOG_LEVEL="warning", PYTHONUNBUFFERED="1"
    )
    if database_url is not None:
        env["HAMMERLOCK_DATABASE_URL"] = database_url
    if pepper is not None:
        env["HAMMERLOCK_API_KEY_PEPPER"] = pepper
    env.update({f"HAMMERLOCK_{k.upper()}": v for k, v in extra.items()})
    return env


def run_cli(
    args: Sequence[str], env: Mapping[str, str], *, timeout_s: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``hammerlock ARGS``; never raises on a non-zero exit (tests assert on it)."""
    return subprocess.run(
        [HAMMERLOCK, *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_dir: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return (self.log_dir / "stdout.txt").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.log_dir / "stderr.txt").read_text(errors="replace")

    def describe(self) -> str:
        return (
            f"server on {self.base_url} (exit {self.proc.poll()})\n"
            f"--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-4000:]}"
        )


def start_server(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = ("--no-migrate", "--no-vault"),
) -> Server:
    """``hammerlock serve --port P ARGS`` in its own process group; returns at once."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with (
        (log_dir / "stdout.txt").open("wb") as out,
        (log_dir / "stderr.txt").open("wb") as err,
    ):
        proc = subprocess.Popen(
            [HAMMERLOCK, "serve", "--port", str(port), *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    return Server(proc=proc, port=port, log_dir=log_dir)


def wait_healthy(server: Server, *, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until ``GET /healthz`` answers 200; fails with the server's output if it exits first."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise AssertionError(f"server exited during startup\n{server.describe()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    return
            time.sleep(_POLL_S)
    raise AssertionError(f"server not healthy after {timeout_s} s\n{server.describe()}")


def stop_server(
    server: Server, sig: signal.Signals = signal.SIGTERM, *, timeout_s: float = STOP_TIMEOUT_S
) -> int | None:
    """Signal the server's process group; SIGKILL it if it outlives ``timeout_s``.

    Returns the exit code if the signal alone stopped it in time, ``None`` if it had to be
    killed.
    """
    proc = server.proc
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
        return None


@contextlib.contextmanager
def cluster(
    database_url: str, tmp_path: Path, nodes: int, *, pepper: str, **extra: str
) -> Iterator[list[Server]]:
    """``nodes`` servers sharing one database and one API-key pepper, each with its own data
    dir (``tmp_path / node{i}``) and node name (``node{i}``), all healthy; stopped afterwards.
    ``extra``: more ``HAMMERLOCK_*`` settings, as for :func:`hammerlock_env`."""
    started = [
        start_server(
            hammerlock_env(
                tmp_path / f"node{i}",
                database_url=database_url,
                pepper=pepper,
                node_name=f"node{i}",
                **extra,
            ),
            tmp_path / f"node{i}-logs",
        )
        for i in range(nodes)
    ]
    try:
        for server in started:
            wait_healthy(server)
        yield started
    finally:
        for server in started:
            stop_server(server)
