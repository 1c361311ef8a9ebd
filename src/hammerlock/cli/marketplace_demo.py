"""`hammerlock demo` (`make demo`): a marketplace day against the running server, in under a
minute.

It runs on the server's machine with the same ``HAMMERLOCK_*`` settings as ``hammerlock serve``:
it mints an admin key with ``hammerlock keys create``, which issues the others over the API
(operator, service, two reviewers, an auditor; all expire the next day — one CLI start instead of
six), then uses only the public HTTP APIs — the API and the card vault:

1. two sellers and five bidders register (each gets its own API key back), cards are tokenized
   at the vault and put on file (the coin's winner has the sandbox's 3-D Secure test card);
2. three lots open with windows of seconds: a rare coin (deposits, a bidding war of proxy maxima
   with soft-close extensions, sold for $193,500; the winner passes 3-D Secure and two reviewers
   approve the charge), a desk that misses its reserve (unsold, deposits released), and a clock
   whose winner never pays (default, deposit kept) and goes to the runner-up's second chance;
3. shipping, a dispute settled by an operator with a partial refund, releases and payouts;
4. a summary table, then ``hammerlock ledger check`` and the audit trail checked through the
   API's signed tree heads and RFC 9162 proofs with a few lines of code of its own.

Every wait polls with a deadline; an error says what to do next.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from hammerlock.settings import Settings

__all__ = ["DEFAULT_API_URL", "DEFAULT_VAULT_URL", "run"]

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_VAULT_URL = "http://127.0.0.1:8001"

VISA = "4242 4242 4242 4242"
VISA_3DS = "4000 0027 6000 3184"  # the sandbox asks for 3-D Secure on every charge
HTTP_TIMEOUT_S = 30.0
POLL_S = 0.2
WINDOW_S = 8  # each lot's bidding window
SOFT_CLOSE_S = 3
PIPED_WIDTH = 130
T = TypeVar("T")


class DemoError(Exception):
    """Something the newcomer can act on: what happened, and what to do next."""

    def __init__(self, what: str, next_step: str) -> None:
        super().__init__(what)
        self.what = what
        self.next_step = next_step


def usd(cents: int | None, *, short: bool = False) -> str:
    """Minor units as dollars; ``short`` drops ``.00``."""
    if cents is None:
        return "—"
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    if short and cents % 100 == 0:
        return f"{sign}${cents // 100:,}"
    return f"{sign}${cents // 100:,}.{cents % 100:02d}"


def _parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- the audit trail, checked with our own code (docs/audit.md "Verify it yourself") --------------


def _jcs(value: Any) -> str:
    """RFC 8785 for audit schema-v1 values (no floats): keys in UTF-16 order, no spaces."""
    if isinstance(value, dict):
        pairs = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(_jcs(k) + ":" + _jcs(v) for k, v in pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_jcs(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def leaf_hash(event: dict[str, Any]) -> bytes:
    body = {k: v for k, v in event.items() if k != "leaf_hash"}
    return hashlib.sha256(b"\x00" + _jcs(body).encode()).digest()


def verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, path: list[bytes], first_root: bytes, second_root: bytes
) -> bool:
    """RFC 9162 §2.1.4.2."""
    if first == second:
        return not path and first_root == second_root
    if first == 0 or first > second or not path:
        return False
    if first & (first - 1) == 0:  # a power of two: the first tree is a subtree, its root implied
        path = [first_root, *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root


def verify_head(head: dict[str, Any], keys: dict[str, bytes]) -> str:
    """Check a signed tree head's Ed25519 signature; returns the key id that signed it."""
    message = "hammerlock.tree_head.v1\n{size}\n{root_hash}\n{timestamp}\n".format(**head)
    raw = keys.get(str(head["key_id"]))
    if raw is None:
        raise DemoError(
            f"tree head of size {head['size']} is signed by unknown key {head['key_id']}",
            "compare GET /v1/audit/public_keys with the keys under <data dir>/keys/, then run "
            "`hammerlock audit verify`",
        )
    if hashlib.sha256(raw).hexdigest()[:16] != head["key_id"]:
        raise DemoError(
            f"key {head['key_id']} does not hash to its id", "run `hammerlock audit verify`"
        )
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(
            base64.b64decode(head["signature"]), message.encode()
        )
    except InvalidSignature:
        raise DemoError(
            f"the signature of the tree head of size {head['size']} does not verify",
            "run `hammerlock audit verify` to find the first bad entry",
        ) from None
    return str(head["key_id"])


# -- talking to the server -----------------------------------------------------------------------


@dataclass
class Party:
    id: str
    name: str
    key: str


@dataclass
class LotRun:
    n: int
    title: str
    short: str
    seller: Party
    body: dict[str, Any]
    lot: dict[str, Any] = field(default_factory=dict)
    deposit_intents: dict[str, str] = field(default_factory=dict)  # bidder id → intent id
    orders: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.lot["id"])


class Client:
    """The API over HTTP: every answer checked, every problem turned into a next step."""

    def __init__(self, api_url: str, vault_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.vault_url = vault_url.rstrip("/")
        self.http = httpx.Client(timeout=HTTP_TIMEOUT_S)

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        key: str | None,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        expect: tuple[int, ...] = (200, 201),
        base: str | None = None,
    ) -> dict[str, Any]:
        url = (base or self.api_url) + path
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        if method == "POST" and base is None:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        for _ in range(40):  # 202: the gateway's answer is not known yet; the same key resumes
            try:
                r = self.http.request(method, url, json=body, params=params, headers=headers)
            except httpx.TransportError as exc:
                which = "card vault" if base else "API"
                raise DemoError(
                    f"lost the {which} at {base or self.api_url} ({type(exc).__name__}: {exc})",
                    "is the server still running? Start it with `make run`, then `make demo`",
                ) from None
            if r.status_code != 202:
                break
            time.sleep(0.5)
        if r.status_code in expect:
            answer: dict[str, Any] = r.json()
            return answer
        raise self._problem(method, path, r)

    def _problem(self, method: str, path: str, r: httpx.Response) -> DemoError:
        try:
            problem = r.json()
        except ValueError:
            problem = {"detail": r.text[:300]}
        code = problem.get("code", "") if isinstance(problem, dict) else ""
        detail = problem.get("detail", "") if isinstance(problem, dict) else str(problem)
        what = f"{method} {path} answered {r.status_code} {code}: {detail}".rstrip(": ")
        if r.status_code == 401:
            return DemoError(
                what,
                "the server does not know the keys this demo minted: run the demo with the same "
                "HAMMERLOCK_* settings (HAMMERLOCK_DATA_DIR, HAMMERLOCK_DATABASE_URL, the pepper) "
                "as `make run`, from the same directory",
            )
        request_id = r.headers.get("x-request-id")
        return DemoError(
            what,
            "this should not happen on a fresh `make run`; the server's log has the details"
            + (f" (X-Request-Id {request_id})" if request_id else ""),
        )

    def get(self, path: str, key: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", path, key, params=params or None)

    def post(
        self, path: str, key: str | None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self.request("POST", path, key, body=body or {})

    def healthy(self, base: str) -> bool:
        try:
            return self.http.get(base + "/healthz", timeout=3).status_code == 200
        except httpx.TransportError:
            return False


def _hammerlock_cli() -> list[str]:
    beside = Path(sys.executable).with_name("hammerlock")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("hammerlock")
    if found:
        return [found]
    return [sys.executable, "-c", "from hammerlock.cli.main import main; main()"]


def mint_admin_key() -> str:
    """``hammerlock keys create --role admin``: the one key the demo takes from the database
    (like ``make admin-key``); the admin issues the others over the API. Refused when the
    embedded database is not where these settings say (run elsewhere, the key would land in a
    new empty database the server never reads)."""
    missing = Settings().missing_sqlite_file
    if missing is not None:
        raise DemoError(
            f"no hammerlock database at {missing}",
            "run the demo where `make run` runs, with the same HAMMERLOCK_* settings "
            "(HAMMERLOCK_DATA_DIR defaults to ./var)",
        )
    try:
        done = subprocess.run(
            [
                *_hammerlock_cli(),
                *("keys", "create", "--role", "admin", "--name", "make demo"),
                *("--expires-in-days", "1"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ),
        )
    except subprocess.TimeoutExpired:
        raise DemoError(
            "`hammerlock keys create` took more than a minute",
            "is the database locked by something else? Try `hammerlock keys list`",
        ) from None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines or not lines[-1].startswith("hl_"):
        raise DemoError(
            "`hammerlock keys create --role admin` failed: "
            + (done.stderr.strip().splitlines() or ["no output"])[-1],
            "run the demo where `make run` runs, with the same HAMMERLOCK_* settings",
        )
    return lines[-1]


# -- the day -------------------------------------------------------------------------------------


class Demo:
    def __init__(self, api_url: str, vault_url: str, console: Console) -> None:
        self.c = Client(api_url, vault_url)
        self.console = console
        self.started = time.monotonic()
        self.keys: dict[str, str] = {}
        self.sellers: dict[str, Party] = {}
        self.bidders: dict[str, Party] = {}
        self.lots: list[LotRun] = []
        self.first_head: dict[str, Any] | None = None
        self.status: Status | None = None
        self.names: dict[str, str] = {}
        self.final_size = 0
        self.heading, self.heading_shown = "", False

    # -- presentation --------------------------------------------------------------------------

    @contextmanager
    def phase(self, title: str) -> Iterator[list[str]]:
        """A spinner while the phase runs; its detail lines under a heading; then one line:
        ✓ what happened (time). A phase without details is that one line."""
        notes: list[str] = []
        t0 = time.monotonic()
        self.heading, self.heading_shown = title, False
        with self.console.status(f"[bold]{title}[/bold] …", spinner="dots") as status:
            self.status = status
            try:
                yield notes
            finally:
                self.status = None
        took = time.monotonic() - t0
        said = "; ".join(notes)
        if self.heading_shown:
            line = f"  [green]✓[/green] {said}"
        else:
            line = f"[green]✓[/green] [bold]{title}[/bold]" + (f" — {said}" if said else "")
        self.console.print(f"{line} [dim]({took:.1f} s)[/dim]")

    def say(self, text: str) -> None:
        """A detail line under the current phase (bids, payments, transitions)."""
        if not self.heading_shown:
            self.console.print(f"[bold]{self.heading}[/bold]")
            self.heading_shown = True
        self.console.print(f"    {text}")

    def doing(self, text: str) -> None:
        if self.status is not None:
            self.status.update(f"[bold]{escape(text)}[/bold] …")

    def who(self, party_id: str | None) -> str:
        return self.names.get(party_id or "", party_id or "—")

    def wait(
        self,
        what: str,
        probe: Callable[[], T],
        done: Callable[[T], bool],
        *,
        timeout_s: float,
        hint: str,
    ) -> T:
        """Poll ``probe`` until ``done`` says so, at most ``timeout_s``: never unbounded."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = probe()
            if done(value):
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"{what}: nothing after {timeout_s:.0f} s", hint)
            self.doing(f"{what} ({left:.0f} s left)")
            time.sleep(min(POLL_S, left))

    # -- phases --------------------------------------------------------------------------------

    def preflight(self) -> None:
        with self.phase("Server") as notes:
            if not self.c.healthy(self.c.api_url):
                raise DemoError(
                    f"hammerlock is not answering on {self.c.api_url}",
                    "start it with `make run` (in another terminal), then run `make demo` again"
                    " (or pass --api-url)",
                )
            if not self.c.healthy(self.c.vault_url):
                raise DemoError(
                    f"the card vault is not answering on {self.c.vault_url}",
                    "`make run` starts it beside the API on :8001 (not with --no-vault); "
                    "pass --vault-url if yours is elsewhere",
                )
            notes.append(f"API {self.c.api_url}, card vault {self.c.vault_url}")

    def mint(self) -> None:
        with self.phase("API keys") as notes:
            self.doing("hammerlock keys create --role admin")
            self.keys["admin"] = mint_admin_key()
            expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
            for name, role in (
                ("operator", "operator"),
                ("service", "service"),
                ("reviewer 1", "reviewer"),
                ("reviewer 2", "reviewer"),
                ("auditor", "auditor"),
            ):
                self.doing(f"POST /v1/keys {role}")
                created = self.c.post(
                    "/v1/keys",
                    self.keys["admin"],
                    {"role": role, "name": f"make demo: {name}", "expires_at": expires},
                )
                self.keys[name] = created["secret"]
            # Anything signed before the day starts: the consistency proof runs from here.
            self.first_head = self.wait(
                "waiting for the first signed tree head",
                self._tree_head,
                lambda head: head is not None,
                timeout_s=15,
                hint="the audit sequencer signs a head every second while events arrive: is it "
                "running? (HAMMERLOCK_AUDIT_HEAD_INTERVAL_S)",
            )
            notes.append(
                "an admin from `hammerlock keys create`; it issues an operator, a service, two "
                "reviewers and an auditor (all expire tomorrow)"
            )

    def _tree_head(self) -> dict[str, Any] | None:
        try:
            return self.c.get("/v1/audit/tree_head", self.keys["auditor"])
        except DemoError as exc:
            if "tree_head_not_found" in exc.what:
                return None
            raise

    def register(self) -> None:
        with self.phase("Parties") as notes:
            service = self.keys["service"]
            for handle, name in (("ada", "Ada's Numismatics"), ("mill", "Mill Lane Antiques")):
                self.doing(f"POST /v1/sellers {name}")
                body = self.c.post("/v1/sellers", service, {"name": name})
                self.sellers[handle] = Party(body["id"], name, body["api_key"])
                self.names[body["id"]] = name
                self.doing(f"PUT /v1/sellers/{body['id']}/payout_destination")
                self.c.request(
                    "PUT",
                    f"/v1/sellers/{body['id']}/payout_destination",
                    body["api_key"],  # the seller's own key
                    body={"gateway_account": f"acct_demo_{handle}"},
                )
            for name in ("Beatrix", "Carlos", "Dana", "Elif", "Femi"):
                self.doing(f"POST /v1/bidders {name}")
                body = self.c.post(
                    "/v1/bidders", service, {"name": name, "email": f"{name.lower()}@example.com"}
                )
                self.bidders[name] = Party(body["id"], name, body["api_key"])
                self.names[body["id"]] = name
            notes.append(
                "2 sellers (each with a payout destination), 5 bidders registered, each with its "
                "own API key"
            )

    def cards(self) -> None:
        with self.phase("Cards on file") as notes:
            for name, bidder in self.bidders.items():
                number = VISA_3DS if name == "Beatrix" else VISA
                self.doing(f"tokenizing {name}'s card at the vault")
                token = self.c.request(
                    "POST",
                    "/v1/tokens",
                    None,
                    base=self.c.vault_url,
                    body={"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
                )
                card = self.c.post(
                    f"/v1/bidders/{bidder.id}/cards", bidder.key, {"payment_method": token["id"]}
                )
                self.say(
                    f"{name}: {card.get('brand') or 'card'} •••• {card.get('last4')} "
                    f"→ {token['id'][:12]}…"
                    + (" [dim](asks for 3-D Secure)[/dim]" if number == VISA_3DS else "")
                )
            notes.append("card numbers went to the vault only; the API holds tok_… tokens")

    def open_lots(self) -> None:
        with self.phase("Three lots open") as notes:
            now = datetime.now(UTC)
            ends = (now + timedelta(seconds=WINDOW_S)).isoformat()
            common = {
                "currency": "USD",
                "starts_at": now.isoformat(),
                "ends_at": ends,
                "soft_close_s": SOFT_CLOSE_S,
                "soft_close_cap_s": 30,
                "inspection_period_s": 120,
            }
            specs = [
                (
                    "coin",
                    "1857 Flying Eagle cent, proof",
                    "ada",
                    {
                        "estimate": 15_000_000,
                        "starting_price": 5_000_000,
                        "reserve_price": 12_000_000,
                        "buyer_premium_bps": 2_500,
                        "seller_commission_bps": 1_000,
                        "payment_window_s": 300,
                    },
                ),
                (
                    "desk",
                    "Victorian walnut writing desk",
                    "mill",
                    {
                        "estimate": 400_000,
                        "starting_price": 50_000,
                        "reserve_price": 350_000,
                        "deposit_bps": 1_000,
                        "buyer_premium_bps": 2_000,
                        "seller_commission_bps": 1_000,
                    },
                ),
                (
                    "clock",
                    "Art Deco mantel clock",
                    "mill",
                    {
                        "estimate": 800_000,
                        "starting_price": 100_000,
                        "reserve_price": 500_000,
                        "deposit_bps": 1_000,
                        "buyer_premium_bps": 2_000,
                        "seller_commission_bps": 1_000,
                        "payment_window_s": 5,
                    },
                ),
            ]
            for n, (short, title, seller, terms) in enumerate(specs, 1):
                body = {"title": title, **common, **terms}
                run = LotRun(n, title, short, self.sellers[seller], body)
                self.doing(f"creating lot {n}: {title}")
                run.lot = self.c.post("/v1/lots", run.seller.key, run.body)
                run.lot = self.c.post(f"/v1/lots/{run.id}/open", run.seller.key)
                self.lots.append(run)
                deposit = run.lot["deposit_amount"]
                self.say(
                    f"lot {n} {title} ({run.seller.name}): estimate {usd(terms['estimate'])}, "
                    f"starts at {usd(terms['starting_price'])}, reserve hidden"
                    + (f", deposit {usd(deposit)}" if deposit else "")
                    + f" — [bold]{run.lot['status']}[/bold]"
                )
            notes.append(
                f"bidding windows of {WINDOW_S} s, soft close {SOFT_CLOSE_S} s (a late bid "
                "pushes the end)"
            )

    def deposits(self) -> None:
        with self.phase("Deposits") as notes:
            coin, desk, clock = self.lots
            plan = [
                (coin, ["Beatrix", "Carlos", "Dana"]),
                (desk, ["Elif", "Femi"]),
                (clock, ["Elif", "Femi"]),
            ]
            challenged: list[tuple[LotRun, str, dict[str, Any]]] = []
            for run, names in plan:
                for name in names:
                    bidder = self.bidders[name]
                    self.doing(f"{name} authorizes a deposit on lot {run.n}")
                    deposit = self.c.post(f"/v1/lots/{run.id}/deposits", bidder.key)
                    intent = deposit["payment_intent"]
                    run.deposit_intents[bidder.id] = intent["id"]
                    line = f"{name} → lot {run.n}: {usd(deposit['amount'])} authorized "
                    line += f"({intent['status']})"
                    if intent["status"] == "requires_action":
                        challenged.append((run, name, intent))
                        line += " — the bank asks for 3-D Secure"
                    self.say(line)
            for run, name, intent in challenged:
                self.doing(f"{name} passes the 3-D Secure challenge")
                self.c.request(
                    "POST", "", None, base=intent["next_action"]["url"], body={"result": "pass"}
                )
                self._wait_intent(intent["id"], {"requires_capture"}, f"{name}'s deposit")
                self.say(f"{name} passed 3-D Secure: deposit on lot {run.n} held")
            count = sum(len(names) for _, names in plan)
            notes.append(f"{count} card authorizations (manual capture), none charged yet")

    def _intent(self, intent_id: str) -> dict[str, Any]:
        return self.c.get(f"/v1/payment_intents/{intent_id}", self.keys["service"])

    def _wait_intent(self, intent_id: str, statuses: set[str], what: str) -> dict[str, Any]:
        return self.wait(
            f"waiting for {what} ({intent_id}) to reach {'/'.join(sorted(statuses))}",
            lambda: self._intent(intent_id),
            lambda intent: intent["status"] in statuses,
            timeout_s=20,
            hint="the payments janitor moves 3-D Secure and reviews on every second: check "
            "the server's log (HAMMERLOCK_PAYMENTS_JANITOR_INTERVAL_S)",
        )

    def bid(self, run: LotRun, name: str, max_amount: int) -> dict[str, Any]:
        bidder = self.bidders[name]
        self.doing(f"{name} bids up to {usd(max_amount)} on lot {run.n}")
        answer = self.c.post(f"/v1/lots/{run.id}/bids", bidder.key, {"max_amount": max_amount})
        before_end = run.lot["ends_at"]
        run.lot = answer["lot"]
        pushed = ""
        if run.lot["ends_at"] != before_end:
            gain = (_parse_ts(run.lot["ends_at"]) - _parse_ts(before_end)).total_seconds()
            pushed = f"  [magenta]⟳ soft close: ends in {SOFT_CLOSE_S} s ({gain:+.1f} s)[/magenta]"
        self.say(
            f"lot {run.n} seq {answer['seq']:>2}  {name:<8} max {usd(max_amount):>12}  →  "
            f"price {usd(run.lot['current_price']):>12}, leader "
            f"{self.who(run.lot['leading_bidder_id'])}"
            + (" [dim](reserve met)[/dim]" if run.lot["reserve_met"] else "")
            + pushed
        )
        return answer

    def bidding(self) -> None:
        with self.phase("Bidding") as notes:
            coin, desk, clock = self.lots
            self.bid(coin, "Carlos", 10_000_000)
            self.bid(coin, "Dana", 13_000_000)
            self.bid(coin, "Beatrix", 15_000_000)
            self.bid(desk, "Elif", 200_000)
            self.bid(desk, "Femi", 260_000)
            self.bid(clock, "Elif", 520_000)
            self.bid(clock, "Femi", 650_000)
            # The war starts inside the coin's last SOFT_CLOSE_S seconds: each bid extends it.
            end = _parse_ts(coin.lot["ends_at"])
            start_at = end - timedelta(seconds=SOFT_CLOSE_S - 1)
            while (left := (start_at - datetime.now(UTC)).total_seconds()) > 0:
                self.doing(f"the coin's last seconds: the war starts in {left:.1f} s")
                time.sleep(min(POLL_S, left))
            for name, max_amount in (
                ("Carlos", 17_500_000),
                ("Beatrix", 20_000_000),
                ("Dana", 19_100_000),
            ):
                self.bid(coin, name, max_amount)
                time.sleep(0.8)
            notes.append(
                f"{sum(r.lot['bid_count'] for r in self.lots)} proxy bids; the coin was extended "
                f"{coin.lot['extensions']} times"
            )

    def _lot(self, run: LotRun) -> dict[str, Any]:
        return self.c.get(f"/v1/lots/{run.id}", self.keys["operator"])

    def _wait_closed(self, run: LotRun, timeout_s: float) -> dict[str, Any]:
        return self.wait(
            f"waiting for the scheduler to close lot {run.n}",
            lambda: self._lot(run),
            lambda lot: lot["status"] in {"closed", "unsold", "settled"},
            timeout_s=timeout_s,
            hint="the auction scheduler closes lots every half second: check the "
            "server's log (HAMMERLOCK_AUCTIONS_SCHEDULER_INTERVAL_S)",
        )

    def _order_of(self, run: LotRun) -> str:
        """The order a close opened: the lot's `auctions.lot.close` audit event names it."""

        def probe() -> list[dict[str, Any]]:
            return list(
                self.c.get(
                    "/v1/audit/events",
                    self.keys["auditor"],
                    action="auctions.lot.close",
                    resource_id=run.id,
                )["data"]
            )

        [event] = self.wait(
            f"waiting for lot {run.n}'s close in the audit log",
            probe,
            lambda events: len(events) == 1,
            timeout_s=15,
            hint="the audit sequencer appends committed events within a second: check the "
            "server's log",
        )
        return str(event["details"]["order_id"])

    def _order(self, order_id: str, key: str | None = None) -> dict[str, Any]:
        return self.c.get(f"/v1/orders/{order_id}", key or self.keys["operator"])

    def closing(self) -> None:
        with self.phase("Hammer") as notes:
            for run in self.lots:
                ends = _parse_ts(run.lot["ends_at"])
                timeout = max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 15
                run.lot = self._wait_closed(run, timeout)
                lot = run.lot
                if lot["status"] == "unsold":
                    self.say(
                        f"lot {run.n} {run.title}: [yellow]unsold[/yellow] — the best bid "
                        f"{usd(lot['current_price'])} missed the reserve "
                        f"{usd(lot.get('reserve_price'))}"
                    )
                else:
                    order_id = self._order_of(run)
                    run.orders.append(self._order(order_id))
                    self.say(
                        f"lot {run.n} {run.title}: [bold]sold for {usd(lot['hammer_price'])}"
                        f"[/bold] to {self.who(lot['winner_id'])} → order {order_id}"
                    )
            coin = self.lots[0]
            notes.append(
                f"the coin hammered at {usd(coin.lot['hammer_price'])} after "
                f"{coin.lot['extensions']} soft-close extensions"
            )
            notes.append("the scheduler closed each at its (extended) end")
        with self.phase("Losers' deposits released") as notes:
            released = 0
            for run in self.lots:
                winner = run.lot.get("winner_id")
                for bidder_id, intent_id in run.deposit_intents.items():
                    if bidder_id == winner:
                        continue
                    self._wait_intent(
                        intent_id, {"canceled"}, f"{self.who(bidder_id)}'s deposit on lot {run.n}"
                    )
                    released += 1
            notes.append(
                f"{released} deposit authorizations voided (the desk's two among them); the "
                "winners' deposits stay for escrow"
            )

    def coin_payment(self) -> None:
        coin = self.lots[0]
        beatrix = self.bidders["Beatrix"]
        with self.phase("The coin is paid") as notes:
            order = coin.orders[0]
            a = order["amounts"]
            self.say(
                f"invoice: hammer {usd(a['hammer_price'])} + buyer's premium "
                f"{usd(a['buyer_premium'])} = {usd(a['total'])}"
            )
            self.doing("Beatrix pays")
            paid = self.c.post(f"/v1/orders/{order['id']}/pay", beatrix.key)
            intent = paid["payment_intent"]
            self.say(
                f"deposit {usd(paid['deposit']['in_escrow'])} captured into escrow; the rest "
                f"{usd(intent['amount'])} charged to her card: [bold]{intent['status']}[/bold]"
            )
            if intent["status"] == "requires_action":
                self.doing("Beatrix passes 3-D Secure")
                self.c.request(
                    "POST", "", None, base=intent["next_action"]["url"], body={"result": "pass"}
                )
                intent = self._wait_intent(
                    intent["id"],
                    {"requires_review", "requires_capture", "succeeded"},
                    "the coin's charge",
                )
                self.say(f"3-D Secure passed → [bold]{intent['status']}[/bold]")
            if intent["status"] == "requires_review":
                # The buyer sees only the review's id and status; the reviewers read the rest.
                review = self.c.get(
                    f"/v1/reviews/{intent['review']['id']}", self.keys["reviewer 1"]
                )
                self.say(
                    f"over $100,000: review {review['id']} needs "
                    f"{review['approvals_required']} different reviewers"
                )
                for n in (1, 2):
                    self.doing(f"reviewer {n} approves")
                    decided = self.c.post(
                        f"/v1/reviews/{review['id']}/approve",
                        self.keys[f"reviewer {n}"],
                        {"note": "provenance and bidder history checked"},
                    )
                    self.say(
                        f"reviewer {n} approves → review {decided['status']} "
                        f"({len(decided['approvals'])} of {review['approvals_required']})"
                    )
                intent = self._wait_intent(intent["id"], {"succeeded"}, "the coin's charge")
            order = self.wait(
                "waiting for the escrow sweeper to mark the coin's order paid",
                lambda: self._order(order["id"]),
                lambda o: o["status"] == "paid",
                timeout_s=20,
                hint="the escrow sweeper runs every second: check the server's log "
                "(HAMMERLOCK_ESCROW_SWEEPER_INTERVAL_S)",
            )
            coin.orders[0] = order
            notes.append(f"{usd(order['escrow_balance'])} in escrow:{order['id']}")

    def default_and_second_chance(self) -> None:
        clock = self.lots[2]
        with self.phase("The clock's winner defaults") as notes:
            first = clock.orders[0]
            self.say(
                f"{self.who(first['buyer_id'])} owes {usd(first['amounts']['total'])} by "
                f"{first['pay_by']} and does not pay"
            )
            first = self.wait(
                "waiting for the payment window to pass (escrow sweeper)",
                lambda: self._order(first["id"]),
                lambda o: o["status"] == "defaulted",
                timeout_s=30,
                hint="the escrow sweeper defaults unpaid orders every second: check the "
                "server's log (HAMMERLOCK_ESCROW_SWEEPER_INTERVAL_S)",
            )
            clock.orders[0] = first
            offer = first["second_chance"]
            self.say(
                f"order {first['id']} [yellow]defaulted[/yellow]: "
                f"{self.who(first['buyer_id'])}'s deposit kept as a penalty; second-chance "
                f"offer to the runner-up at {usd(offer['amount'])} until {offer['expires_at']}"
            )
            runner_up = self._runner_up(clock, first)
            self.doing(f"{runner_up.name} accepts the second-chance offer")
            new = self.c.post(f"/v1/orders/{first['id']}/second_chance/accept", runner_up.key)
            self.say(
                f"{runner_up.name} accepts → new order {new['id']} for "
                f"{usd(new['amounts']['total'])}"
            )
            paid = self.c.post(f"/v1/orders/{new['id']}/pay", runner_up.key)
            if paid["status"] != "paid":
                paid = self.wait(
                    "waiting for the second-chance order to be paid",
                    lambda: self._order(new["id"]),
                    lambda o: o["status"] == "paid",
                    timeout_s=20,
                    hint="check the payment intent in the server's log",
                )
            clock.orders.append(paid)
            self.say(f"{runner_up.name} pays by card on file → [bold]{paid['status']}[/bold]")
            notes.append(
                f"penalty {usd(clock.lot['deposit_amount'])}; the clock sold to "
                f"{runner_up.name} at {usd(offer['amount'])}"
            )

    def _runner_up(self, run: LotRun, order: dict[str, Any]) -> Party:
        for party in self.bidders.values():
            if party.id in run.deposit_intents and party.id != order["buyer_id"]:
                return party
        raise DemoError(f"no runner-up for lot {run.n}", "look at the lot's bids")

    def shipping(self) -> None:
        coin, clock = self.lots[0], self.lots[2]
        shipments = [
            (coin, coin.orders[0], "ups", "1Z999AA10123456784"),
            (clock, clock.orders[-1], "usps", "9400111899223197428490"),
        ]
        with self.phase("Shipped and delivered") as notes:
            for run, sold, carrier, tracking in shipments:
                self.doing(f"{run.seller.name} ships lot {run.n}")
                order = self.c.post(
                    f"/v1/orders/{sold['id']}/ship",
                    run.seller.key,
                    {"carrier": carrier, "tracking_number": tracking},
                )
                buyer = self.bidders[self.who(order["buyer_id"])]
                order = self.c.post(f"/v1/orders/{order['id']}/confirm_delivery", buyer.key)
                self.say(
                    f"lot {run.n}: {carrier.upper()} {tracking} → delivered; inspection until "
                    f"{order['inspection_ends_at']}"
                )
            notes.append("tracking numbers checked by carrier format; inspection periods started")

    def release_coin(self) -> None:
        coin = self.lots[0]
        with self.phase("The coin is accepted") as notes:
            order = self.c.post(
                f"/v1/orders/{coin.orders[0]['id']}/accept", self.bidders["Beatrix"].key
            )
            order = self._settled(order)
            coin.orders[0] = order
            self.say(
                f"escrow released: {usd(order['released']['to_seller'])} to "
                f"{coin.seller.name}, {usd(order['released']['to_revenue'])} to the house; "
                f"payout {order['payout']['status']}"
            )
            notes.append(f"escrow now {usd(order['escrow_balance'])}")

    def _settled(self, order: dict[str, Any]) -> dict[str, Any]:
        return self.wait(
            f"waiting for order {order['id']}'s payout",
            lambda: self._order(order["id"]),
            lambda o: (
                o["payout"]["status"] == "paid"
                and all(r["refund"] for r in o["refunds"])
                and o["escrow_balance"] == 0
            ),
            timeout_s=20,
            hint="the escrow sweeper resumes payouts and refunds: check the server's log",
        )

    def dispute(self) -> None:
        clock = self.lots[2]
        order = clock.orders[-1]
        buyer = self.bidders[self.who(order["buyer_id"])]
        refund = order["amounts"]["total"] // 5
        with self.phase("A dispute, settled") as notes:
            order = self.c.post(
                f"/v1/orders/{order['id']}/dispute",
                buyer.key,
                {"reason": "the clock does not keep time: the movement needs a service"},
            )
            self.say(f"{buyer.name} disputes → [bold]{order['status']}[/bold] (release frozen)")
            order = self.c.post(
                f"/v1/orders/{order['id']}/resolve",
                self.keys["operator"],
                {"refund_amount": refund, "note": "a partial refund covers the service"},
            )
            order = self._settled(order)
            clock.orders[-1] = order
            self.say(
                f"the operator refunds {usd(order['refunded_amount'])} to {buyer.name}'s card; "
                f"the rest is [bold]{order['status']}[/bold]: "
                f"{usd(order['released']['to_seller'])} to {clock.seller.name}, "
                f"{usd(order['released']['to_revenue'])} to the house (fees shrink pro rata)"
            )
            notes.append(
                f"payout {order['payout']['status']}, escrow {usd(order['escrow_balance'])}"
            )

    # -- the summary and the checks ------------------------------------------------------------

    def summary(self) -> None:
        table = Table(
            title="[bold]The day's lots[/bold]",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for column in ("lot", "outcome", "buyer"):
            table.add_column(column)
        for column in ("hammer", "premium", "commission", "refunded", "to seller", "to house"):
            table.add_column(column, justify="right")
        refunded = to_seller = to_house = 0
        payouts: list[str] = []
        for run in self.lots:
            if not run.orders:
                dash = ["—"] * 6
                table.add_row(f"{run.n} {run.short}", "unsold (reserve)", "—", *dash)
                continue
            for order in run.orders:
                a = order["amounts"]
                label = f"{run.n} {run.short}" + (", 2nd chance" if order["parent_order"] else "")
                if order["status"] == "defaulted":
                    penalty = int(run.lot["deposit_amount"])
                    to_house += penalty
                    table.add_row(
                        label,
                        "defaulted (penalty)",
                        self.who(order["buyer_id"]),
                        usd(a["hammer_price"], short=True),
                        *["—"] * 4,
                        usd(penalty, short=True),
                    )
                    continue
                outcome = str(order["status"])
                if order["refunded_amount"]:
                    outcome = f"disputed, {outcome}"
                released = order["released"]
                refunded += int(order["refunded_amount"] or 0)
                to_seller += int(released["to_seller"])
                to_house += int(released["to_revenue"])
                payouts.append(
                    f"{run.seller.name} {usd(released['to_seller'])} {order['payout']['status']}"
                )
                table.add_row(
                    label,
                    outcome,
                    self.who(order["buyer_id"]),
                    usd(a["hammer_price"], short=True),
                    usd(a["buyer_premium"], short=True),
                    usd(a["seller_commission"], short=True),
                    usd(order["refunded_amount"] or 0, short=True),
                    usd(released["to_seller"], short=True),
                    usd(released["to_revenue"], short=True),
                )
        table.add_section()
        table.add_row(
            "total",
            *[""] * 5,
            usd(refunded, short=True),
            usd(to_seller, short=True),
            usd(to_house, short=True),
        )
        self.console.print()
        self.console.print(table)
        self.console.print(f"Seller payouts: {'; '.join(payouts)}.")
        self.console.print(
            "The house keeps the premium and the commission (shrunk pro rata by a refund) and a "
            "defaulter's deposit.\n"
        )

    def ledger_check(self) -> None:
        with self.phase("Ledger check") as notes:
            self.doing("hammerlock ledger check")
            try:
                done = subprocess.run(
                    [*_hammerlock_cli(), "ledger", "check"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    env=dict(os.environ),
                )
            except subprocess.TimeoutExpired:
                raise DemoError(
                    "`hammerlock ledger check` took more than two minutes",
                    "run it by hand to see how far it gets",
                ) from None
            lines = [line for line in done.stdout.splitlines() if line.strip()]
            if done.returncode != 0:
                for line in lines[-10:]:
                    self.say(escape(line))
                raise DemoError(
                    "the ledger check failed: " + (lines[-1] if lines else done.stderr.strip()),
                    "run `hammerlock ledger check` and read docs/invariants.md",
                )
            notes.append(escape(lines[-1] if lines else "passed"))

    def audit(self) -> None:
        auditor = self.keys["auditor"]
        with self.phase("Audit trail") as notes:
            keys = {
                k["key_id"]: base64.b64decode(k["public_key"])
                for k in self.c.get("/v1/audit/public_keys", auditor)["keys"]
            }
            coin = self.lots[0]
            [event] = self.c.get(
                "/v1/audit/events", auditor, action="auctions.lot.close", resource_id=coin.id
            )["data"]
            seq = int(event["seq"])
            first = self.first_head
            assert first is not None
            head = self.wait(
                "waiting for a signed tree head past the coin's close",
                lambda: self.c.get("/v1/audit/tree_head", auditor),
                lambda h: int(h["size"]) > seq and int(h["size"]) > int(first["size"]),
                timeout_s=15,
                hint="the sequencer signs a head every second while events arrive",
            )
            for h in (first, head):
                verify_head(h, keys)
            self.say(
                f"tree heads of size {first['size']:,} and {head['size']:,}: Ed25519 signatures "
                f"verify (key {head['key_id']})"
            )
            leaf = leaf_hash(event)
            if leaf.hex() != event["leaf_hash"]:
                raise DemoError(
                    f"event {seq} does not hash to its leaf_hash",
                    "run `hammerlock audit verify`",
                )
            proof = self.c.get(
                "/v1/audit/proof/inclusion", auditor, seq=seq, tree_size=head["size"]
            )
            path = [bytes.fromhex(h) for h in proof["path"]]
            if not verify_inclusion(
                leaf, seq, int(head["size"]), path, bytes.fromhex(head["root_hash"])
            ):
                raise DemoError(
                    f"the inclusion proof of event {seq} does not verify",
                    "run `hammerlock audit verify` to find the first bad entry",
                )
            self.say(
                f"event {seq} (the coin's hammer, {usd(event['details']['hammer_price'])}) is in "
                f"the signed tree: {len(path)}-hash inclusion proof verifies"
            )
            consistency = self.c.get(
                "/v1/audit/proof/consistency", auditor, first=first["size"], second=head["size"]
            )
            cpath = [bytes.fromhex(h) for h in consistency["path"]]
            if not verify_consistency(
                int(first["size"]),
                int(head["size"]),
                cpath,
                bytes.fromhex(first["root_hash"]),
                bytes.fromhex(head["root_hash"]),
            ):
                raise DemoError(
                    f"the tree of size {head['size']} is not an extension of size {first['size']}",
                    "run `hammerlock audit verify` to find the first bad entry",
                )
            self.say(
                f"the head before the day and the head after it are consistent "
                f"({len(cpath)}-hash proof): nothing earlier was rewritten"
            )
            notes.append("signatures, an inclusion proof and a consistency proof all verify")
            self.final_size = int(head["size"])

    def run(self) -> None:
        self.console.rule("[bold]hammerlock: a marketplace day[/bold]")
        self.preflight()
        self.mint()
        self.register()
        self.cards()
        self.open_lots()
        self.deposits()
        self.bidding()
        self.closing()
        self.default_and_second_chance()
        self.coin_payment()
        self.shipping()
        self.release_coin()
        self.dispute()
        self.summary()
        self.ledger_check()
        self.audit()
        took = time.monotonic() - self.started
        self.console.print(
            f"\n[bold green]Marketplace day complete in {took:.1f} s: 3 lots, "
            f"ledger check passed, audit trail verified ({self.final_size:,} signed events).[/]"
        )
        self.console.print(
            f"Next: open [bold]{self.c.api_url}/docs[/bold], or run "
            "[bold]hammerlock audit verify[/bold] to check every event."
        )


def run(api_url: str = DEFAULT_API_URL, vault_url: str = DEFAULT_VAULT_URL) -> int:
    """Run the day; 0 when everything passed, 1 (with what to do next) otherwise."""
    console = Console(soft_wrap=True)
    if not console.is_terminal:  # piped: lines and the table at their natural width
        console = Console(soft_wrap=True, width=PIPED_WIDTH)
    demo = Demo(api_url, vault_url, console)
    try:
        demo.run()
    except DemoError as exc:
        console.print(f"\n[red]✗ {escape(exc.what)}[/red]")
        console.print(f"[bold]Next:[/bold] {escape(exc.next_step)}")
        return 1
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/yellow]: run `make demo` again for a fresh day")
        return 130
    finally:
        demo.c.close()
    return 0
