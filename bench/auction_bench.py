"""`make bench-auctions`: bids and lot settlements over HTTP beside raw asyncpg, in one run.

One `hammerlock serve` process (with its embedded card vault and the sandbox gateway) on a
scratch PostgreSQL database; lots without deposits (estimate below the deposit threshold).

1. Bids on one hot lot: wrk (a C client, -t2 -c16) posts proxy bids from 250 bidders, each bid's
   maximum above the last one sent (a bid that arrives after a higher one may be refused
   `bid_too_low`: accepted bids are counted in `lot_bids` afterwards). Latency p50/p99 is wrk's,
   over all requests.
2. The same across 100 lots.
3. Full settlements: close (admin) → order (`GET /v1/lots/{id}` names it; from `escrow_orders`
   on a server whose lot view does not) → pay (sandbox gateway through the vault) → ship →
   accept (release + payout), 16 lots at a time, httpx (lots prepared beforehand: create, open,
   one bid).

Baselines, same run, same concurrency (16 connections): raw asyncpg inserts of the same bid rows
into a table shaped like `lot_bids` (one row per transaction), and the same insert with the lot
row locked and updated in the transaction (the floor of per-lot serialization). Floors, same
run, same wrk script and requests: `bench/floor_app.py` (FastAPI under uvicorn as `serve` runs
it) answering the bid route with none of hammerlock's work — empty, with one asyncpg insert per
request, and with the inserts group-committed: the least CPU a bid request can cost in this stack
on this machine.

`--profile` samples the server with py-spy during a hot-lot run and prints the top costs.
Appends the table with date, machine and load average to docs/benchmarks.md unless --no-record.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = "postgresql://postgres@127.0.0.1:5432"
DBNAME = "hl_bench_auctions"
DSN = f"{PG}/{DBNAME}"
CONC = 16
BIDDERS = 250
LOTS = 100
SPACING = 2_000_000  # cents between successive maxima: > 2 steps of the top increment band

LUA = r"""
local threads = 0
local all = {}
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
  all[#all + 1] = thread
end
function init(args)
  prefix = args[1]
  base = tonumber(args[2])
  spacing = tonumber(args[3])
  nthreads = tonumber(args[4])
  keys, lots = {}, {}
  for line in io.lines(args[5]) do
    local k, l = line:match("(%S+) (%S+)")
    keys[#keys + 1] = k
    lots[#lots + 1] = l
  end
  counter = 0
  statuses = {}
end
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(all) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("status %d %d\n", k, v)) end
end
request = function()
  local g = counter * nthreads + tid
  counter = counter + 1
  local i = g % #keys + 1
  local body = string.format('{"max_amount":%d}', base + g * spacing)
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. keys[i],
    ["Idempotency-Key"] = prefix .. "-" .. g,
  }
  return wrk.format("POST", "/v1/lots/" .. lots[i] .. "/bids", headers, body)
end
"""


def sh(cmd: list[str], **kw: object) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600, **kw).stdout  # type: ignore[call-overload,no-any-return]


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def admin_sql(sql: str, dsn: str = f"{PG}/postgres") -> None:
    """Statements (several allowed), by default in the ``postgres`` database."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetchval(sql: str, *args: object) -> object:
    conn = await asyncpg.connect(DSN, timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def wait_ready(urls: list[str], seconds: float, what: str) -> None:
    """Until every URL answers 200, or exit after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if all(httpx.get(url, timeout=1).status_code == 200 for url in urls):
                return
        time.sleep(0.2)
    sys.exit(f"{what} did not start")


@contextlib.contextmanager
def server(data_dir: Path, workers: int = 1) -> Iterator[tuple[str, str, str, int, int]]:
    env = {
        **os.environ,
        "HAMMERLOCK_DATABASE_URL": DSN.replace("postgresql://", "postgresql+asyncpg://"),
        "HAMMERLOCK_DATA_DIR": str(data_dir),
        "HAMMERLOCK_LOG_LEVEL": "warning",
        "HAMMERLOCK_DB_POOL_SIZE": "20",
        "HAMMERLOCK_VAULT_TOKENIZE_IP_LIMIT": "100000",
        "HAMMERLOCK_VAULT_TOKENIZE_CARD_LIMIT": "100000",
    }
    env.pop("HAMMERLOCK_VAULT_URL", None)
    sh([str(BIN / "hammerlock"), "migrate"], env=env)
    key = (
        sh(
            [str(BIN / "hammerlock"), "keys", "create", "--role", "admin", "--name", "bench"],
            env=env,
        )
        .strip()
        .splitlines()[-1]
    )
    port, vault_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "hammerlock"),
            "serve",
            "--port",
            str(port),
            "--vault-port",
            str(vault_port),
            "--no-migrate",
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready([f"{base}/healthz", f"http://127.0.0.1:{vault_port}/healthz"], 60, "server")
        yield base, key, f"http://127.0.0.1:{vault_port}", api_pid(proc.pid, port), proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def api_pid(root: int, port: int) -> int:
    """The process listening on the API port (serve may run the API in a child)."""
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], check=False, capture_output=True, text=True
    )
    match = re.search(r"pid=(\d+)", out.stdout)
    return int(match.group(1)) if match else root


# -- setup through the API ---------------------------------------------------------------------


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            limits=httpx.Limits(max_connections=CONC, max_keepalive_connections=CONC),
        )

    async def post(self, path: str, body: dict[str, object], key: str | None = None) -> dict:  # type: ignore[type-arg]
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        r = await self.client.post(path, json=body, headers=headers)
        if r.status_code >= 300:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
        return r.json()  # type: ignore[no-any-return]


async def gather_limited(coros: list, limit: int = CONC) -> list:  # type: ignore[type-arg]
    sem = asyncio.Semaphore(limit)

    async def one(c):  # type: ignore[no-untyped-def]
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


def _ts(offset_s: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)).isoformat()


async def setup_parties(api: Api, vault: str) -> tuple[str, list[tuple[str, str]]]:
    async with httpx.AsyncClient(timeout=30) as v:
        r = await v.post(
            f"{vault}/v1/tokens",
            json={"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        )
        r.raise_for_status()
        token = r.json()["id"]
    seller = await new_seller(api, 0)
    bidders = await gather_limited(
        [api.post("/v1/bidders", {"name": f"bench bidder {n}"}) for n in range(BIDDERS)]
    )
    await gather_limited(
        [api.post(f"/v1/bidders/{b['id']}/cards", {"payment_method": token}) for b in bidders]
    )
    return seller, [(b["id"], b["api_key"]) for b in bidders]


async def new_seller(api: Api, n: int) -> str:
    seller = await api.post("/v1/sellers", {"name": f"bench seller {n}"})
    r = await api.client.put(
        f"/v1/sellers/{seller['id']}/payout_destination",
        json={"gateway_account": f"acct_bench_seller_{n}"},
    )
    r.raise_for_status()  # without one, payouts wait as no_destination
    return str(seller["id"])


async def new_lot(api: Api, seller_id: str, *, premium: int = 0, commission: int = 0) -> str:
    lot = await api.post(
        "/v1/lots",
        {
            "seller_id": seller_id,
            "title": "bench lot",
            "currency": "USD",
            "estimate": 50_000,  # USD 500.00: no deposit
            "starting_price": 1_000,
            "ends_at": _ts(3_600),
            "buyer_premium_bps": premium,
            "seller_commission_bps": commission,
        },
    )
    opened = await api.post(f"/v1/lots/{lot['id']}/open", {})
    assert opened["status"] == "open", opened
    return str(lot["id"])


# -- bids with wrk -----------------------------------------------------------------------------


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if m is None:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk_bids(
    base: str,
    lines: list[str],
    prefix: str,
    *,
    start: int,
    duration_s: int,
    workdir: Path,
    only: int | None = None,
) -> tuple[int, float, float, float]:
    """Run wrk; return (requests, elapsed s, p50 ms, p99 ms). With ``only``, any other status
    (or a socket error) ends the bench: a floor that failed would look cheap."""
    keys = workdir / f"{prefix}.keys"
    keys.write_text("\n".join(lines) + "\n")
    script = workdir / "bids.lua"
    script.write_text(LUA)
    started = time.monotonic()
    out = sh(
        [
            "wrk",
            "-t2",
            f"-c{CONC}",
            f"-d{duration_s}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            base,
            "--",
            prefix,
            str(start),
            str(SPACING),
            "2",
            str(keys),
        ]
    )
    elapsed = time.monotonic() - started
    reqs = re.search(r"(\d+) requests in", out)
    # the latency distribution's own lines ("     50%   23.51ms"), not a "±stdev" figure
    # such as "72.50%" in the thread stats above them
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if reqs is None or p50 is None or p99 is None:
        sys.exit(f"could not read wrk output:\n{out}")
    statuses = sorted(re.findall(r"^status (\d+) (\d+)$", out, re.M))
    codes = ", ".join(f"{c}: {n}" for c, n in statuses)
    print(f"    wrk statuses {codes}", flush=True)
    if only is not None and ({int(c) for c, _ in statuses} != {only} or "Socket errors" in out):
        sys.exit(f"expected only {only} answers from {base}; wrk said:\n{out}")
    return int(reqs.group(1)), elapsed, _ms(p50.group(1)), _ms(p99.group(1))


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of every process in a process group (the server and its vault)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def postgres_cpu_s() -> float:
    """CPU seconds of every PostgreSQL process on this machine (backends, WAL writer,
    checkpointer…): the database's share of the budget. Other databases' work counts too — run
    on a quiet machine."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            head, _, rest = stat.read_text().rpartition(")")
            if head.partition("(")[2] == "postgres":
                fields = rest.split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have exited (wrk runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def budget_row(label: str, r: dict[str, float], target: str) -> str:
    """A bid scenario's CPU budget: the vault has no part in a bid (counted in the server's
    figure when several workers run)."""
    accepted_share = min(1.0, r["accepted"] / max(r["requests"], 1))
    return (
        f"| {label} | {r['cpu_ms']:.2f} ms | — | {r['pg_ms']:.2f} ms | {r['loadgen_ms']:.2f} ms "
        f"| {r['total_ms']:.2f} ms | {r['ceiling_req_s']:,.0f} req/s "
        f"(~{r['ceiling_req_s'] * accepted_share:,.0f} accepted/s at this run's "
        f"{accepted_share:.0%} accepted) | {target} |"
    )


def floor_row(label: str, r: dict[str, float]) -> str:
    return (
        f"| {label} | {r['cpu_ms']:.2f} ms | — | {r['pg_ms']:.2f} ms | {r['loadgen_ms']:.2f} ms "
        f"| {r['total_ms']:.2f} ms | {r['ceiling_req_s']:,.0f} req/s (measured "
        f"{r['requests_per_s']:,.0f} req/s, p99 {r['p99']:.1f} ms) | — |"
    )


def cpu_budget(requests: int, app_s: float, pg_s: float, wrk_s: float) -> dict[str, float]:
    """CPU per request of the app, PostgreSQL and wrk, their total, and the ceiling it allows."""
    n = max(requests, 1)
    per = {"cpu_ms": 1000 * app_s / n, "pg_ms": 1000 * pg_s / n, "loadgen_ms": 1000 * wrk_s / n}
    total = sum(per.values())
    return {**per, "total_ms": total, "ceiling_req_s": ceiling(total)}


def ceiling(ms_per_op: float) -> float:
    """Operations per second the whole machine could do if every core did nothing else."""
    return (os.cpu_count() or 1) * 1000 / ms_per_op if ms_per_op > 0 else float("inf")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bid_scenario(
    base: str,
    lines: list[str],
    label: str,
    *,
    duration_s: int,
    workdir: Path,
    pid: int,
    pgid: int | None = None,
) -> dict[str, float]:
    """``pgid`` set (several API workers): CPU is counted over the whole server (API workers and
    the vault), not one process."""
    cpu_of = (lambda: group_cpu_s(pgid)) if pgid is not None else (lambda: cpu_s(pid))
    tag = re.sub(r"[^a-z0-9]", "", label.lower())[:12] + uuid.uuid4().hex[:6]
    top = int(asyncio.run(fetchval("SELECT coalesce(max(leading_max), 0) FROM lots")))  # type: ignore[call-overload]
    wrk_bids(base, lines, tag + "w", start=top + SPACING, duration_s=2, workdir=workdir)  # warm-up
    top = int(asyncio.run(fetchval("SELECT coalesce(max(leading_max), 0) FROM lots")))  # type: ignore[call-overload]
    load = loadavg()
    cpu0, pg0, wrk0 = cpu_of(), postgres_cpu_s(), children_cpu_s()
    reqs, elapsed, p50, p99 = wrk_bids(
        base, lines, tag, start=top + 10 * SPACING, duration_s=duration_s, workdir=workdir
    )
    cpu, pg_cpu, wrk_cpu = cpu_of() - cpu0, postgres_cpu_s() - pg0, children_cpu_s() - wrk0
    accepted = int(
        asyncio.run(  # type: ignore[call-overload]
            fetchval("SELECT count(*) FROM lot_bids WHERE idempotency_key LIKE $1", tag + "-%")
        )
    )
    res = {
        "accepted_per_s": accepted / elapsed,
        "requests_per_s": reqs / elapsed,
        "accepted": accepted,
        "requests": reqs,
        "p50": p50,
        "p99": p99,
        "cpu_util": cpu / elapsed,
        **cpu_budget(reqs, cpu, pg_cpu, wrk_cpu),
    }
    print(
        f"  {label}: {res['accepted_per_s']:,.0f} accepted bids/s ({accepted:,} of {reqs:,} "
        f"requests, {res['requests_per_s']:,.0f} req/s), p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"{'server' if pgid else 'API process'} {res['cpu_ms']:.1f} ms CPU per request, "
        f"{res['cpu_util']:.0%} of a core "
        f"(load {load})",
        flush=True,
    )
    print(
        f"    CPU per request: {'server' if pgid else 'API'} {res['cpu_ms']:.2f} ms + PostgreSQL "
        f"{res['pg_ms']:.2f} ms + wrk {res['loadgen_ms']:.2f} ms = {res['total_ms']:.2f} ms → "
        f"at most {res['ceiling_req_s']:,.0f} req/s on {os.cpu_count()} cores",
        flush=True,
    )
    res["load"] = os.getloadavg()[0]
    return res


# -- baselines: raw asyncpg --------------------------------------------------------------------


BENCH_TABLES = (
    "DROP TABLE IF EXISTS bench_bids; DROP TABLE IF EXISTS bench_lots;"
    "CREATE TABLE bench_bids (LIKE lot_bids INCLUDING ALL);"
    "CREATE TABLE bench_lots (LIKE lots INCLUDING ALL);"
    "INSERT INTO bench_lots SELECT * FROM lots;"
)


async def baseline(lot_ids: list[str], *, lock: bool, duration_s: float) -> dict[str, float]:
    conns = [await asyncpg.connect(DSN) for _ in range(CONC)]
    await conns[0].execute(BENCH_TABLES)
    seqs: dict[str, itertools.count[int]] = {lot: itertools.count(1) for lot in lot_ids}
    ticket = itertools.count()
    lat: list[float] = []
    insert = (
        "INSERT INTO bench_bids (lot_id, seq, id, bidder_id, max_amount, kind, status, "
        "price_after, leader_after, placed_us, created_by_key_id, idempotency_key) "
        "VALUES ($1, $2, $3, $4, $5, 'proxy', 'accepted', $6, $7, $8, $9, $10)"
    )
    stop = time.monotonic() + duration_s

    async def worker(conn: asyncpg.Connection) -> None:
        while time.monotonic() < stop:
            g = next(ticket)
            lot = lot_ids[g % len(lot_ids)]
            args = (
                f"bid_{uuid.uuid4().hex[:20]}",
                f"bdr_b{g % BIDDERS:04d}",
                1_000 + g,
                1_000 + g,
                f"bdr_b{(g + 1) % BIDDERS:04d}",
                time.time_ns() // 1_000,
                f"key_{g % BIDDERS}",
                f"bl-{g}",
            )
            t0 = time.perf_counter()
            if lock:
                async with conn.transaction():
                    await conn.fetchrow(
                        "SELECT last_seq FROM bench_lots WHERE id = $1 FOR UPDATE", lot
                    )
                    await conn.execute(insert, lot, next(seqs[lot]), *args)
                    await conn.execute(
                        "UPDATE bench_lots SET last_seq = last_seq + 1, current_price = $2, "
                        "version = version + 1 WHERE id = $1",
                        lot,
                        1_000 + g,
                    )
            else:
                await conn.execute(insert, lot, next(seqs[lot]), *args)
            lat.append((time.perf_counter() - t0) * 1000)

    started = time.monotonic()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.monotonic() - started
    for c in conns:
        await c.close()
    q = statistics.quantiles(lat, n=100)
    return {"per_s": len(lat) / elapsed, "p50": q[49], "p99": q[98]}


# -- baselines: the framework's floor -----------------------------------------------------------


@contextlib.contextmanager
def floor_server(mode: str) -> Iterator[tuple[str, int]]:
    """`bench/floor_app.py` under uvicorn with `hammerlock serve`'s options; (base URL, pid)."""
    port = free_port()
    env = {**os.environ, "FLOOR_MODE": mode, "FLOOR_DSN": DSN}
    proc = subprocess.Popen(
        [
            str(BIN / "python"), "-m", "uvicorn", "floor_app:app", "--app-dir",
            str(ROOT / "bench"), "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning", "--workers", "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready([f"{base}/openapi.json"], 30, "floor app")
        yield base, proc.pid
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()


def floor_scenario(
    mode: str, lines: list[str], *, duration_s: int, workdir: Path
) -> dict[str, float]:
    """The floor app driven exactly like a bid scenario: every request answers 201."""
    if mode != "empty":
        asyncio.run(admin_sql(BENCH_TABLES, DSN))
    with floor_server(mode) as (base, pid):
        tag = f"floor{mode}" + uuid.uuid4().hex[:6]
        wrk_bids(base, lines, tag + "w", start=SPACING, duration_s=2, workdir=workdir, only=201)
        load = loadavg()
        cpu0, pg0, wrk0 = cpu_s(pid), postgres_cpu_s(), children_cpu_s()
        reqs, elapsed, p50, p99 = wrk_bids(
            base, lines, tag, start=SPACING, duration_s=duration_s, workdir=workdir, only=201
        )
        cpu, pg_cpu, wrk_cpu = cpu_s(pid) - cpu0, postgres_cpu_s() - pg0, children_cpu_s() - wrk0
    res = {
        "requests_per_s": reqs / elapsed,
        "p50": p50,
        "p99": p99,
        **cpu_budget(reqs, cpu, pg_cpu, wrk_cpu),
    }
    print(
        f"  floor ({mode}): {res['requests_per_s']:,.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} "
        f"ms; CPU per request: app {res['cpu_ms']:.2f} ms + PostgreSQL {res['pg_ms']:.2f} ms + "
        f"wrk {res['loadgen_ms']:.2f} ms = {res['total_ms']:.2f} ms → at most "
        f"{res['ceiling_req_s']:,.0f} req/s on {os.cpu_count()} cores (load {load})",
        flush=True,
    )
    return res


# -- settlement --------------------------------------------------------------------------------


async def settlement(
    base: str,
    key: str,
    seller_id: str,
    bidders: list[tuple[str, str]],
    *,
    n_lots: int,
    n_sellers: int,
    dur: float,
    pids: tuple[int, int],
    spy_raw: Path | None,
) -> dict[str, float]:
    api = Api(base, key)
    print(
        f"  preparing {n_lots} lots of {n_sellers} sellers (create, open, one bid each) …",
        flush=True,
    )
    # A marketplace's lots belong to many sellers: a seller's payable account has a limit (a
    # payout never exceeds what was released), so it is locked by each of its own settlements.
    sellers = [seller_id, *await gather_limited([new_seller(api, n) for n in range(1, n_sellers)])]

    async def prepare(i: int) -> tuple[str, str]:
        lot = await new_lot(api, sellers[i % n_sellers], premium=2_500, commission=1_000)
        bidder_id, bidder_key = bidders[i % len(bidders)]
        await api.post(f"/v1/lots/{lot}/bids", {"max_amount": 5_000}, key=bidder_key)
        return lot, bidder_id

    lots = await gather_limited([prepare(i) for i in range(n_lots)])
    pg = await asyncpg.create_pool(DSN, min_size=2, max_size=4)
    queue = collections.deque(lots)
    lat: list[float] = []
    steps: dict[str, list[float]] = collections.defaultdict(list)
    failures: list[str] = []
    stop = time.monotonic() + dur

    async def timed(name: str, path: str, body: dict[str, object]) -> dict:  # type: ignore[type-arg]
        t0 = time.perf_counter()
        out = await api.post(path, body)
        steps[name].append((time.perf_counter() - t0) * 1000)
        return out

    async def order_of(lot: str) -> str:
        if not lot_names_orders:  # a server whose lot view does not name its orders yet
            found = await pg.fetchval(
                "SELECT id FROM escrow_orders WHERE lot_id = $1 AND generation = 0", lot
            )
            return str(found)
        t0 = time.perf_counter()
        r = await api.client.get(f"/v1/lots/{lot}")
        steps["get lot"].append((time.perf_counter() - t0) * 1000)
        return str(r.json()["orders"][0]["id"])

    probe = await api.client.get(f"/v1/lots/{lots[0][0]}")
    lot_names_orders = "orders" in probe.json()

    async def worker() -> None:
        while queue and time.monotonic() < stop:
            lot, _ = queue.popleft()
            t0 = time.perf_counter()
            try:
                closed = await timed("close", f"/v1/lots/{lot}/close", {})
                assert closed["status"] == "closed", closed["status"]
                order = await order_of(lot)
                paid = await timed("pay", f"/v1/orders/{order}/pay", {})
                assert paid["status"] == "paid", paid
                await timed(
                    "ship",
                    f"/v1/orders/{order}/ship",
                    {"carrier": "ups", "tracking_number": "1Z" + uuid.uuid4().hex[:16].upper()},
                )
                done = await timed("accept", f"/v1/orders/{order}/accept", {})
                assert done["status"] == "released", done["status"]
            except (AssertionError, RuntimeError) as exc:
                failures.append(str(exc)[:300])
                continue
            lat.append((time.perf_counter() - t0) * 1000)

    load = loadavg()
    api_pid_, group = pids
    spy = None if spy_raw is None else start_spy(api_pid_, int(dur), spy_raw)
    print(f"  settling {len(lots)} lots, {CONC} at a time …", flush=True)
    cpu_api, cpu_all = cpu_s(api_pid_), group_cpu_s(group)
    cpu_pg, cpu_self = postgres_cpu_s(), self_cpu_s()
    started = time.monotonic()
    sampling = asyncio.Event()
    sampler = asyncio.create_task(lock_waits(sampling))
    await asyncio.gather(*(worker() for _ in range(CONC)))
    elapsed = time.monotonic() - started
    sampling.set()
    waits, top_waits = await sampler
    cpu_api, cpu_all = cpu_s(api_pid_) - cpu_api, group_cpu_s(group) - cpu_all
    cpu_pg, cpu_self = postgres_cpu_s() - cpu_pg, self_cpu_s() - cpu_self
    if spy is not None:
        spy.wait(timeout=60)
    payouts = await pg.fetchval(
        "SELECT count(*) FROM escrow_orders WHERE status = 'released' AND payout_status = 'paid'"
    )
    await pg.close()
    await api.client.aclose()
    if failures:
        print(f"  {len(failures)} failed, e.g. {failures[0]}", flush=True)
    if not lat:
        sys.exit("no settlement completed")
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    rate = len(lat) / elapsed
    print(
        f"  settlements: {rate:,.1f}/s ({len(lat)} in {elapsed:.1f} s; {payouts} payouts paid), "
        f"p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms; CPU per settlement: API "
        f"{1000 * cpu_api / len(lat):.0f} ms, vault {1000 * (cpu_all - cpu_api) / len(lat):.0f} "
        f"ms (load {load})",
        flush=True,
    )
    per = {
        "api": 1000 * cpu_api / len(lat),
        "vault": 1000 * (cpu_all - cpu_api) / len(lat),
        "pg": 1000 * cpu_pg / len(lat),
        "loadgen": 1000 * cpu_self / len(lat),
    }
    total_ms = sum(per.values())
    print(
        f"    CPU per settlement: API {per['api']:.0f} ms + vault {per['vault']:.0f} ms + "
        f"PostgreSQL {per['pg']:.0f} ms + this client {per['loadgen']:.0f} ms = {total_ms:.0f} ms "
        f"→ at most {ceiling(total_ms):,.1f} settlements/s on {os.cpu_count()} cores",
        flush=True,
    )
    for name, xs in steps.items():
        print(f"    {name:<7} median {statistics.median(xs):6.1f} ms", flush=True)
    print(
        f"  PostgreSQL backends, mean over {waits['samples']:.0f} samples: "
        f"{waits['active']:.2f} running a statement, {waits['idle_in_txn']:.2f} idle in a "
        f"transaction (the API's turn), {waits['lock']:.2f} waiting on a lock",
        flush=True,
    )
    for query, n in top_waits:
        print(f"    lock waits {n / waits['samples']:.2f}: {query}", flush=True)
    return {
        "per_s": rate,
        "done": len(lat),
        "payouts": int(payouts),
        "p50": q[49],
        "p99": q[98],
        "failed": len(failures),
        "cpu_api_ms": 1000 * cpu_api / len(lat),
        "cpu_vault_ms": per["vault"],
        "cpu_pg_ms": per["pg"],
        "cpu_loadgen_ms": per["loadgen"],
        "cpu_total_ms": total_ms,
        "ceiling_per_s": ceiling(total_ms),
        "lock_waits": waits["lock"],
        "in_txn": waits["active"] + waits["idle_in_txn"],
        **{f"step_{k}": statistics.median(v) for k, v in steps.items()},
    }


async def lock_waits(
    done: asyncio.Event, every_s: float = 0.02
) -> tuple[dict[str, float], list[tuple[str, int]]]:
    """Sample pg_stat_activity while settlements run: is a hot row serializing them?

    Counts the bench database's backends running a statement, idle inside a transaction (the
    API process computing between two statements) and waiting on a lock (a row lock: another
    transaction holds the row), and names the statements that waited most.
    """
    conn = await asyncpg.connect(DSN, timeout=10)
    totals = collections.Counter[str]()
    waiting = collections.Counter[str]()
    samples = 0
    try:
        while not done.is_set():
            rows = await conn.fetch(
                "SELECT state, wait_event_type, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
                " AS q FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                DBNAME,
            )
            samples += 1
            for r in rows:
                if r["state"] == "idle in transaction":
                    totals["idle_in_txn"] += 1
                elif r["state"] == "active":
                    totals["active"] += 1
                    if r["wait_event_type"] == "Lock":
                        totals["lock"] += 1
                        waiting[r["q"]] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every_s)
    finally:
        await conn.close()
    n = max(samples, 1)
    means = {
        "samples": float(samples),
        "active": totals["active"] / n,
        "idle_in_txn": totals["idle_in_txn"] / n,
        "lock": totals["lock"] / n,
    }
    return means, waiting.most_common(4)


# -- profile -----------------------------------------------------------------------------------


def start_spy(pid: int, duration_s: int, raw: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (100 Hz, non-idle samples) on one process, or None when it is not installed."""
    spy = shutil.which("py-spy") or os.environ.get("PY_SPY", "py-spy")
    if shutil.which(spy) is None:
        print("  py-spy not installed (pip install py-spy; or PY_SPY=path): no profile")
        return None
    cmd = [spy, "record", "-p", str(pid), "-d", str(duration_s), "-r", "100", "-f", "raw"]
    if os.environ.get("PY_SPY_IDLE"):  # wall time: where requests wait, not only CPU
        cmd.append("--idle")
    return subprocess.Popen(
        [*cmd, "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


BUCKETS = (  # inclusive, by a substring of a frame
    ("HTTP request, all of it (middleware down)", "RequestContextMiddleware.__call__"),
    ("  idempotency lease (before the handler)", "IdempotencyStore._begin"),
    ("  idempotency completion (after)", "IdempotencyStore._complete"),
    ("  key check (_authorize)", "_authorize (hammerlock/api/route.py"),
    ("  PAN guard on the body", "_pan_guard"),
    ("  the bid: Auctions.place_bid", "Auctions.place_bid"),
    ("  the settlement: escrow service", "hammerlock/escrow/service.py"),
    ("  the settlement: payments service", "hammerlock/payments/service.py"),
    ("  audit event in the transaction (audit.record)", "record (hammerlock/audit/service.py"),
    ("SQLAlchemy statement compile / cache key", "_compile_w_cache"),
    ("SQLAlchemy execute, all (incl. asyncpg)", "AsyncConnection.execute"),
    ("asyncpg execute", "PreparedStatement.__bind_execute"),
    ("background: audit sequencer", "hammerlock/audit/sequencer.py"),
    ("background: audit archive sink", "hammerlock/audit/sinks/archive.py"),
    ("background: relays, webhooks", "relay"),
    ("worker threads (to_thread)", "concurrent/futures/thread.py"),
)


def summarize(raw: Path, label: str) -> list[str]:
    if not raw.exists():
        return []
    selfc: collections.Counter[str] = collections.Counter()
    pkg: collections.Counter[str] = collections.Counter()
    bucket: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        frames = [re.sub(r" \(.*?/site-packages/", " (", f) for f in stack.split(";")]
        if frames[-1].startswith("_worker (") and "concurrent/futures/thread.py" in frames[-1]:
            continue  # an idle pool thread waiting on its queue, which py-spy counts as busy
        total += count
        selfc[frames[-1]] += count
        m = re.search(r"\(([A-Za-z_]+)[/.]", frames[-1])
        pkg[m.group(1) if m else "?"] += count
        for name, needle in BUCKETS:
            if any(needle in f for f in frames):
                bucket[name] += count
    total = max(total, 1)
    out = [f"py-spy, {total} non-idle samples at 100 Hz of the API process during {label}"]
    out += [
        "self time by package: "
        + ", ".join(f"{p} {100 * c / total:.0f}%" for p, c in pkg.most_common(12))
    ]
    out += ["inclusive:"] + [f"  {100 * bucket[n] / total:5.1f}%  {n}" for n, _ in BUCKETS]
    out += ["self, top 12:"] + [f"  {100 * c / total:5.1f}%  {f}" for f, c in selfc.most_common(12)]
    return out


def profile_bids(base: str, lines: list[str], pid: int, workdir: Path, duration_s: int) -> Path:
    raw = workdir / "profile-bids.txt"
    top = int(asyncio.run(fetchval("SELECT coalesce(max(leading_max), 0) FROM lots")))  # type: ignore[call-overload]
    spy_proc = start_spy(pid, duration_s, raw)
    if spy_proc is None:
        return raw
    time.sleep(1)
    wrk_bids(base, lines, "prof" + uuid.uuid4().hex[:6], start=top + 10 * SPACING,
             duration_s=duration_s, workdir=workdir)  # fmt: skip
    spy_proc.wait(timeout=60)
    return raw


# -- report ------------------------------------------------------------------------------------


def machine() -> str:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    pg_version = asyncio.run(fetchval("SHOW server_version"))
    return (
        f"{platform.node()} · {os.cpu_count()} cores (nproc) · {mem_kb / 1024 / 1024:.0f} GiB · "
        f"{platform.python_implementation()} {platform.python_version()} · PostgreSQL {pg_version}"
    )


def ok(flag: bool) -> str:
    return "✅" if flag else "❌"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--settle-lots", type=int, default=200, help="lots prepared to settle")
    parser.add_argument(
        "--settle-sellers", type=int, default=50, help="sellers the settled lots belong to"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the API process")
    parser.add_argument("--profile-dir", help="keep py-spy's raw stacks here")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs")
    parser.add_argument("--workers", type=int, default=1, help="API worker processes (serve)")
    parser.add_argument(
        "--settle-only", action="store_true", help="settlements only (no bids, no record)"
    )
    parser.add_argument(
        "--bids-only", action="store_true", help="bids over HTTP only (no baselines, no record)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, timeout=600)
    if shutil.which("wrk") is None:
        sys.exit("missing wrk (apt-get install wrk)")
    d = args.duration
    load_start = loadavg()
    asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)'))
    asyncio.run(admin_sql(f'CREATE DATABASE "{DBNAME}"'))
    host = machine()
    print(f"machine: {host}; load average {load_start}", flush=True)
    prof: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with server(work / "data", args.workers) as (base, key, vault, pid, pgid):
            spy_dir = Path(args.profile_dir) if args.profile_dir else work
            spy_dir.mkdir(parents=True, exist_ok=True)
            api = Api(base, key)

            async def setup() -> tuple[str, list[tuple[str, str]], list[str]]:
                seller, bidders = await setup_parties(api, vault)
                lots = await gather_limited([new_lot(api, seller) for _ in range(LOTS + 1)])
                return seller, bidders, lots

            seller_id, bidders, lot_ids = asyncio.run(setup())
            hot, many = lot_ids[0], lot_ids[1:]
            hot_lines = [f"{k} {hot}" for _, k in bidders]
            many_lines = [f"{bidders[j % BIDDERS][1]} {many[j % LOTS]}" for j in range(500)]
            if not args.settle_only:
                print("bids over HTTP (wrk -t2 -c16):", flush=True)
                whole = pgid if args.workers > 1 else None
                r_hot = bid_scenario(
                    base, hot_lines, "one hot lot", duration_s=d, workdir=work, pid=pid, pgid=whole
                )
                r_many = bid_scenario(
                    base, many_lines, f"{LOTS} lots", duration_s=d, workdir=work, pid=pid,
                    pgid=whole,
                )  # fmt: skip
                if args.profile:
                    raw = profile_bids(base, hot_lines, pid, work, d)
                    if raw.exists() and spy_dir != work:
                        shutil.copy(raw, spy_dir / raw.name)
                    prof = summarize(raw, "a hot-lot bid run")
                    print("\n".join(prof), flush=True)
            if not args.settle_only and not args.bids_only:
                print(f"baselines (raw asyncpg, {CONC} connections):", flush=True)
                b = {}
                for name, lots, lock in (
                    ("hot", [hot], False),
                    ("many", many, False),
                    ("hot_lock", [hot], True),
                    ("many_lock", many, True),
                ):
                    b[name] = asyncio.run(baseline(lots, lock=lock, duration_s=d))
                    print(
                        f"  {name}: {b[name]['per_s']:,.0f} rows/s, p50 {b[name]['p50']:.1f} ms, "
                        f"p99 {b[name]['p99']:.1f} ms",
                        flush=True,
                    )
            if not args.bids_only:
                print(
                    "settlement (close → order → pay → ship → accept: release + payout):",
                    flush=True,
                )
                r_settle = asyncio.run(
                    settlement(
                        base,
                        key,
                        seller_id,
                        bidders,
                        n_lots=args.settle_lots,
                        n_sellers=args.settle_sellers,
                        dur=d,
                        pids=(pid, pgid),
                        spy_raw=spy_dir / "profile-settle.txt" if args.profile else None,
                    )
                )
                if args.profile:
                    settle_prof = summarize(spy_dir / "profile-settle.txt", "settlements")
                    print("\n".join(settle_prof), flush=True)
        if not args.settle_only:
            # After the server stopped: its background work would count in the floors' share
            # of PostgreSQL's CPU. One process each (a floor has no `--workers`).
            print(
                "floors (bench/floor_app.py, one process: the same bid requests, none of the work):"
            )
            floors = {
                mode: floor_scenario(mode, hot_lines, duration_s=d, workdir=work)
                for mode in ("empty", "insert", "batch")
            }
    asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)'))
    if args.settle_only or args.bids_only:
        return

    title = (
        f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — `make bench-auctions` "
        f"(`bench/auction_bench.py`, {d} s per scenario)"
    )
    setup_line = (
        f"`hammerlock serve --workers {args.workers}` (embedded vault, sandbox gateway), "
        "PostgreSQL; bids from "
        f"wrk `-t2 -c{CONC}`, {BIDDERS} bidders each raising the maximum, lots without "
        f"deposits; baselines are raw asyncpg with {CONC} connections, one row (or one "
        "lot-locked bid) per transaction. Latency p50 / p99 in ms. A bid that reaches the lot "
        "after a higher one is refused (`bid_too_low`); only accepted bids are counted."
    )
    h, m, bh, bhl = r_hot, r_many, b["hot"], b["hot_lock"]
    cpu_label = "server" if args.workers > 1 else "API"
    hot_row = (
        f"| bids, one hot lot (accepted; load {h['load']:.1f}) | **{h['accepted_per_s']:,.0f}/s** "
        f"({h['accepted']:,.0f} of {h['requests']:,.0f} requests), {h['p50']:.1f} / "
        f"{h['p99']:.1f} ms; {cpu_label} {h['cpu_ms']:.1f} ms CPU/request | "
        f"insert {bh['per_s']:,.0f}/s "
        f"({bh['p50']:.1f} / {bh['p99']:.1f} ms); lock + insert + update "
        f"{bhl['per_s']:,.0f}/s ({bhl['p50']:.1f} / {bhl['p99']:.1f} ms) | "
        f"≥ 2,000/s {ok(h['accepted_per_s'] >= 2_000)}, p99 < 25 ms {ok(h['p99'] < 25)} |"
    )
    many_row = (
        f"| bids, {LOTS} lots (accepted; load {m['load']:.1f}) | **{m['accepted_per_s']:,.0f}/s** "
        f"({m['accepted']:,.0f} of {m['requests']:,.0f}), {m['p50']:.1f} / {m['p99']:.1f} ms; "
        f"{cpu_label} {m['cpu_ms']:.1f} ms CPU/request | insert {b['many']['per_s']:,.0f}/s; "
        f"lock + insert + update {b['many_lock']['per_s']:,.0f}/s | "
        f"≥ 5,000/s {ok(m['accepted_per_s'] >= 5_000)} |"
    )
    st = r_settle
    settle_row = (
        "| lot settlements, close → get lot (its order) → pay → ship → accept (release + "
        f"payout), {CONC} at a time, lots of {args.settle_sellers} sellers | "
        f"**{st['per_s']:,.1f}/s** ({st['done']:,.0f} done, "
        f"{st['payouts']:,.0f} payouts paid), {st['p50']:.0f} / {st['p99']:.0f} ms per "
        f"settlement; API {st['cpu_api_ms']:.0f} ms CPU each; PostgreSQL backends waiting on "
        f"a lock {st['lock_waits']:.2f} of {st['in_txn']:.2f} in a transaction (mean) | — | "
        f"≥ 100/s {ok(st['per_s'] >= 100)} |"
    )
    steps = ", ".join(
        f"{k.removeprefix('step_')} {v:.0f}" for k, v in st.items() if k.startswith("step_")
    )
    lines = [
        "",
        title,
        "",
        f"Machine: {host} · load average {load_start} (1/5/15 min) at the start",
        "",
        setup_line,
        "",
        "| scenario | figure | baseline | target |",
        "|---|---:|---:|---:|",
        hot_row,
        many_row,
        settle_row,
        "",
        f"Settlement steps, median ms: {steps}.",
        "",
        (
            "CPU per operation across the machine (/proc; PostgreSQL = every `postgres` process, "
            "the load generator = wrk for bids, the bench's own client for settlements) and the "
            f"rate those costs allow if all {os.cpu_count()} cores did nothing else:"
        ),
        "",
        (
            f"| operation | {cpu_label} | vault | PostgreSQL | load generator | total | ceiling | "
            "target |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        budget_row("bid request, one hot lot", h, "≥ 2,000 accepted/s"),
        budget_row(f"bid request, {LOTS} lots", m, "≥ 5,000/s"),
        floor_row("floor, one process: the bid route, empty (FastAPI + uvicorn)", floors["empty"]),
        floor_row("floor, one process: the bid route + one asyncpg insert", floors["insert"]),
        floor_row("floor, one process: the bid route + group-committed inserts", floors["batch"]),
        (
            f"| settlement | {st['cpu_api_ms']:.1f} ms | {st['cpu_vault_ms']:.1f} ms | "
            f"{st['cpu_pg_ms']:.1f} ms | {st['cpu_loadgen_ms']:.1f} ms | "
            f"{st['cpu_total_ms']:.1f} ms | {st['ceiling_per_s']:,.1f}/s | ≥ 100/s |"
        ),
    ]
    print("\n".join(lines))
    if not args.no_record:
        with (ROOT / "docs" / "benchmarks.md").open("a") as fh:
            fh.write("\n".join(lines) + "\n")
        print("appended to docs/benchmarks.md")


if __name__ == "__main__":
    main()
