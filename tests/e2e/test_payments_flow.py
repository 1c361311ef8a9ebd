"""The issue's "done when", tried as a new user would: real ``hammerlock serve --vault-port``
processes, cards tokenized at the vault, payments through the API, the sandbox gateway's own
charge records counted afterwards — and a scan of everything outside the vault for the card
numbers used.

1. 4242… pays 50.00 with automatic capture → ``succeeded``; 4000…0002 → a decline;
2. the 3-D Secure card → ``requires_action``; the challenge is passed by a JSON POST to its url
   and the intent moves on by itself;
3. 12,000.00 → ``requires_review``; a reviewer approves → captured;
4. 193,500.00 → one approval leaves it in review; a second, different reviewer completes it;
5. a POST retried with the same Idempotency-Key → the same intent, one charge at the gateway;
6. the vault crashes right after the charge (``crash_after_charge``), the whole server is killed,
   restarted, the request retried: one charge, and the payment completes;
7. no card number in the API's database, its logs or the audit trail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hammerlock.security.pan import find_pans
from tests.servers import (
    Server,
    free_port,
    hammerlock_env,
    last_line,
    run_cli,
    start_server,
    stop_server,
    wait_healthy,
)

pytestmark = [pytest.mark.processes, pytest.mark.xdist_group("processes")]

VISA_OK = "4242 4242 4242 4242"
VISA_DECLINE = "4000000000000002"
VISA_3DS = "4000002760003184"
CANARIES = ("4242424242424242", VISA_DECLINE, VISA_3DS)
TIMEOUT_S = 40.0  # a crash on the far side answers after the vault client's own timeout


@dataclass
class World:
    tmp: Path
    env: dict[str, str]
    server: Server
    vault_port: int
    keys: dict[str, str]

    @property
    def api(self) -> str:
        return self.server.base_url

    @property
    def vault(self) -> str:
        return f"http://127.0.0.1:{self.vault_port}"

    def headers(self, who: str, idem: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.keys[who]}"}
        if idem is not None:
            headers["Idempotency-Key"] = idem
        return headers

    def tokenize(self, number: str) -> str:
        r = httpx.post(
            self.vault + "/v1/tokens",
            json={"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            timeout=TIMEOUT_S,
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["id"]
        return token

    def pay(
        self, token: str, amount: int, idem: str | None = None, *, settle: bool = True
    ) -> httpx.Response:
        """POST the payment; a 202 (outcome not known yet: a busy machine) is retried with the
        same Idempotency-Key, as docs/payments.md tells clients to, unless ``settle`` is off."""
        idem = idem or str(uuid.uuid4())
        for _ in range(20):
            r = self._post_payment(token, amount, idem)
            if not settle or r.status_code != 202:
                return r
            time.sleep(0.5)
        return r

    def _post_payment(self, token: str, amount: int, idem: str) -> httpx.Response:
        return httpx.post(
            self.api + "/v1/payment_intents",
            json={
                "amount": amount,
                "currency": "USD",
                "payment_method": token,
                "capture_method": "automatic",
                "confirm": True,
                "return_url": "https://shop.example/paid",
            },
            headers=self.headers("service", idem),
            timeout=TIMEOUT_S,
        )

    def intent(self, intent_id: str) -> dict[str, Any]:
        r = httpx.get(
            f"{self.api}/v1/payment_intents/{intent_id}",
            headers=self.headers("service"),
            timeout=TIMEOUT_S,
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def wait_status(self, intent_id: str, status: str, timeout_s: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.intent(intent_id)
            if body["status"] == status or time.monotonic() > deadline:
                assert body["status"] == status, (body, self.server.describe())
                return body
            time.sleep(0.2)

    def charges(self, intent_id: str) -> list[dict[str, Any]]:
        r = httpx.get(
            self.api + "/v1/sandbox/charges",
            params={"limit": 1000},
            headers=self.headers("admin"),
            timeout=TIMEOUT_S,
        )
        assert r.status_code == 200, r.text
        return [c for c in r.json()["data"] if str(c["gateway_key"]).startswith(intent_id + ".")]

    def approve(self, review_id: str, who: str) -> httpx.Response:
        return httpx.post(
            f"{self.api}/v1/reviews/{review_id}/approve",
            json={"note": f"checked by {who}"},
            headers=self.headers(who, str(uuid.uuid4())),
            timeout=TIMEOUT_S,
        )


def _serve(tmp: Path, env: dict[str, str], vault_port: int, name: str) -> Server:
    server = start_server(env, tmp / name, args=["--vault-port", str(vault_port)], port=free_port())
    try:
        wait_healthy(server, timeout_s=60)
        deadline = time.monotonic() + 30
        while "docs at" not in server.stdout and time.monotonic() < deadline:
            time.sleep(0.1)
    except BaseException:
        stop_server(server)
        raise
    return server


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    env = hammerlock_env(tmp_path / "var")
    assert run_cli(["migrate"], env).returncode == 0
    keys = {}
    for who, role in (
        ("admin", "admin"),
        ("service", "service"),
        ("reviewer1", "reviewer"),
        ("reviewer2", "reviewer"),
    ):
        created = run_cli(["keys", "create", "--role", role, "--name", who], env)
        assert created.returncode == 0, created.stderr
        keys[who] = last_line(created.stdout).strip()
    vault_port = free_port()
    server = _serve(tmp_path, env, vault_port, "logs")
    w = World(tmp_path, env, server, vault_port, keys)
    try:
        yield w
    finally:
        stop_server(w.server)


def test_a_new_users_payments_end_to_end(world: World) -> None:
    ok = world.tokenize(VISA_OK)

    paid = world.pay(ok, 5_000)
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "succeeded"
    assert len(world.charges(paid.json()["id"])) == 1

    declined = world.pay(world.tokenize(VISA_DECLINE), 5_000).json()
    assert declined["status"] == "requires_payment_method"
    assert declined["last_payment_error"]["code"] == "card_declined"

    challenged = world.pay(world.tokenize(VISA_3DS), 7_500).json()
    assert challenged["status"] == "requires_action", challenged
    url = challenged["next_action"]["url"]
    assert url.startswith(world.vault)
    passed = httpx.post(url, json={"result": "pass"}, timeout=TIMEOUT_S)
    assert passed.status_code == 200, passed.text
    world.wait_status(challenged["id"], "succeeded", timeout_s=10)

    big = world.pay(ok, 1_200_000).json()
    assert big["status"] == "requires_review", big
    assert big["review"]["approvals_required"] == 1
    queue = httpx.get(
        world.api + "/v1/reviews",
        params={"status": "open"},
        headers=world.headers("reviewer1"),
        timeout=TIMEOUT_S,
    ).json()
    assert big["id"] in [r["payment_intent"] for r in queue["data"]]
    assert world.approve(big["review"]["id"], "reviewer1").json()["status"] == "approved"
    assert world.intent(big["id"])["status"] == "succeeded"

    coin = world.pay(ok, 19_350_000).json()
    assert coin["review"]["approvals_required"] == 2
    one = world.approve(coin["review"]["id"], "reviewer1")
    assert one.json()["status"] == "open"
    assert world.intent(coin["id"])["status"] == "requires_review"
    same = world.approve(coin["review"]["id"], "reviewer1")
    assert same.status_code == 409
    assert same.json()["code"] == "already_approved"
    assert world.approve(coin["review"]["id"], "reviewer2").json()["status"] == "approved"
    assert world.intent(coin["id"])["status"] == "succeeded"

    idem = str(uuid.uuid4())
    first = world.pay(ok, 2_500, idem)
    again = world.pay(ok, 2_500, idem)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    for intent_id in (paid.json()["id"], challenged["id"], big["id"], coin["id"]):
        charges = world.charges(intent_id)
        assert len(charges) == 1, charges
        assert charges[0]["status"] == "captured"
    assert len(world.charges(first.json()["id"])) == 1

    _no_card_numbers_outside_the_vault(world)


def test_a_crash_after_the_charge_still_ends_with_one_charge(world: World) -> None:
    token = world.tokenize(VISA_OK)
    stop_server(world.server)
    crashing = dict(world.env, HAMMERLOCK_SANDBOX_FAULTS="crash_after_charge")
    world.server = _serve(world.tmp, crashing, world.vault_port, "logs-crash")
    idem = str(uuid.uuid4())
    mid_flight = world.pay(token, 4_200, idem, settle=False)
    assert mid_flight.status_code == 202, mid_flight.text
    assert mid_flight.json()["status"] == "processing"
    intent_id = mid_flight.json()["id"]

    stop_server(world.server, timeout_s=0.5)  # the whole server, killed
    world.server = _serve(world.tmp, world.env, world.vault_port, "logs-after")
    deadline = time.monotonic() + 30
    while True:
        retried = world.pay(token, 4_200, idem, settle=False)
        if retried.status_code not in {409, 202} or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the dead process's Idempotency-Key lease runs out first
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == intent_id
    assert retried.json()["status"] == "succeeded"
    charges = world.charges(intent_id)
    assert len(charges) == 1, charges
    assert charges[0]["status"] == "captured"


def _in_token(text: str, start: int, end: int) -> bool:
    """A digit run inside a hex digest or an id (a letter right before or after it) is part of
    that token, not a card number: leaf hashes and fingerprints are full of such runs."""
    return any(
        0 <= i < len(text) and text[i].isascii() and text[i].isalpha() for i in (start - 1, end)
    )


def _no_card_numbers_outside_the_vault(world: World) -> None:
    found: list[str] = []
    data = world.tmp / "var"
    vault_dir = data / "vault"
    sandbox_dir = data / "sandbox"
    for path in data.rglob("*"):
        if not path.is_file() or vault_dir in path.parents or sandbox_dir in path.parents:
            continue
        text = path.read_bytes().decode("latin-1")
        found += [f"{path}: {text[a:b]}" for a, b in find_pans(text) if not _in_token(text, a, b)]
        found += [f"{path}: {c}" for c in CANARIES if c in text]
    for log in (world.tmp / "logs").glob("*.txt"):
        text = log.read_text(errors="replace")
        found += [f"{log}: {c}" for c in CANARIES if c in text]
    after: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if after is not None:
            params["after_seq"] = after
        page = httpx.get(
            world.api + "/v1/audit/events",
            params=params,
            headers=world.headers("admin"),
            timeout=TIMEOUT_S,
        ).json()
        for event in page["data"]:
            text = str(event)
            found += [f"audit {event['seq']}: {c}" for c in CANARIES if c in text]
        if not page["data"] or page["next_cursor"] is None:
            break
        after = page["data"][-1]["seq"]
    assert found == []
