"""`make tour`: a guided walk through the ledger and card payments against the running server
(`make run`, which starts the card vault beside the API).

It creates keys in the local data dir, then uses only the public HTTP APIs (the API on :8000,
the vault on :8001), printing each request and what came back, so a newcomer sees the contracts
a marketplace team builds on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

console = Console()
BASE = os.environ.get("HAMMERLOCK_DEMO_URL", "http://127.0.0.1:8000")
VAULT = os.environ.get("HAMMERLOCK_DEMO_VAULT_URL", "http://127.0.0.1:8001")


def step(title: str, text: str) -> None:
    console.print()
    console.print(Panel(text, title=f"[bold]{title}[/bold]", expand=False))


def show(response: httpx.Response) -> Any:
    colour = "green" if response.status_code < 400 else "yellow"
    console.print(
        f"  → [{colour}]{response.status_code}[/{colour}] "
        + (
            "[dim](replayed)[/dim] "
            if response.headers.get("idempotent-replayed") == "true"
            else ""
        ),
        end="",
    )
    body = response.json()
    console.print_json(data=body)
    return body


def operator_key() -> str:
    return new_key("operator", "make tour")


def new_key(role: str, name: str) -> str:
    hammerlock = Path(sys.executable).parent / "hammerlock"
    out = subprocess.run(
        [str(hammerlock), "keys", "create", "--role", role, "--name", name],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return out.strip().splitlines()[-1]


def balances(client: httpx.Client, ids: list[str]) -> None:
    table = Table("account", "debits posted", "credits posted", "debits pending", "credits pending")
    for account_id in ids:
        a = client.get(f"/v1/ledger/accounts/{account_id}").json()
        table.add_row(
            account_id,
            str(a["debits_posted"]),
            str(a["credits_posted"]),
            str(a["debits_pending"]),
            str(a["credits_pending"]),
        )
    console.print(table)


def transfer(client: httpx.Client, *transfers: dict[str, Any], key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key or str(uuid.uuid4())}
    return show(
        client.post("/v1/ledger/transfers", json={"transfers": list(transfers)}, headers=headers)
    )


def main() -> None:
    try:
        httpx.get(f"{BASE}/healthz", timeout=3).raise_for_status()
    except httpx.HTTPError:
        console.print(
            f"[red]hammerlock is not answering on {BASE}.[/red] Start it first with "
            "[bold]make run[/bold] (in another terminal), then run [bold]make tour[/bold] again."
        )
        raise SystemExit(1) from None
    run = uuid.uuid4().hex[:6]
    house, wallet = f"house-{run}", f"wallet-{run}"
    step(
        "1. An operator key",
        "API keys carry one role. `hammerlock keys create` prints the key once (stored hashed).",
    )
    client = httpx.Client(
        base_url=BASE, headers={"Authorization": f"Bearer {operator_key()}"}, timeout=30
    )
    console.print("  created an operator key")

    step(
        "2. Two accounts",
        "Amounts are integers in minor units (cents). The bidder's wallet may not go negative:\n"
        "flag debits_must_not_exceed_credits.",
    )
    show(
        client.post(
            "/v1/ledger/accounts",
            json={
                "accounts": [
                    {"id": house, "currency": "USD", "code": "house"},
                    {
                        "id": wallet,
                        "currency": "USD",
                        "code": "wallet",
                        "flags": ["debits_must_not_exceed_credits"],
                    },
                ]
            },
        )
    )

    step(
        "3. Fund the wallet with $500.00", "Every transfer debits one account and credits another."
    )
    funding = {
        "id": f"demo-{run}-fund",
        "debit_account_id": house,
        "credit_account_id": wallet,
        "amount": 50_000,
        "currency": "USD",
        "code": "top_up",
    }
    transfer(client, funding, key=f"demo-{run}-fund")
    step(
        "4. The same request again (a client retry)",
        "Same Idempotency-Key: the stored answer is replayed byte for byte, nothing moves twice.",
    )
    transfer(client, funding, key=f"demo-{run}-fund")

    step(
        "5. Hold $300.00 for a bid, for 60 seconds",
        "A pending transfer reserves money; limits count it. It will expire unless posted.",
    )
    transfer(
        client,
        {
            "id": f"demo-{run}-hold",
            "debit_account_id": wallet,
            "credit_account_id": house,
            "amount": 30_000,
            "currency": "USD",
            "code": "bid_hold",
            "flags": ["pending"],
            "timeout_s": 60,
        },
    )
    balances(client, [house, wallet])

    step("6. Try to spend $250.00 more", "Only $200.00 is free: the ledger refuses, per item.")
    transfer(
        client,
        {
            "id": f"demo-{run}-overspend",
            "debit_account_id": wallet,
            "credit_account_id": house,
            "amount": 25_000,
            "currency": "USD",
            "code": "purchase",
        },
    )

    step("7. The lot sells for $280.00: post part of the hold", "The rest is released.")
    transfer(
        client,
        {
            "id": f"demo-{run}-capture",
            "pending_id": f"demo-{run}-hold",
            "amount": 28_000,
            "flags": ["post_pending"],
        },
    )
    balances(client, [house, wallet])

    step("8. A statement", "Each line carries the account's balances after it.")
    lines = client.get(f"/v1/ledger/accounts/{wallet}/transfers").json()["data"]
    table = Table("transfer", "code", "amount", "credits posted after", "debits posted after")
    for line in lines:
        after = line["balance_after"]
        table.add_row(
            line["id"],
            line["code"],
            str(line["amount"]),
            str(after["credits_posted"]),
            str(after["debits_posted"]),
        )
    console.print(table)

    step(
        "9. A card number never enters the API",
        "Card data belongs in the vault; the API refuses anything that looks like one.",
    )
    show(
        client.post(
            "/v1/ledger/accounts",
            json={
                "accounts": [
                    {
                        "id": f"demo-{run}:x",
                        "currency": "USD",
                        "code": "x",
                        "metadata": {"note": "4242 4242 4242 4242"},
                    }
                ]
            },
        )
    )
    payments(run)
    console.print(
        "\nDone. Run [bold]hammerlock ledger check[/bold] to recompute every balance from the "
        f"transfers, [bold]hammerlock audit verify[/bold] to check the audit trail, and open "
        f"[bold]{BASE}/docs[/bold] for the whole API."
    )


def tokenize(number: str) -> str:
    console.print(f"  POST {VAULT}/v1/tokens  (the checkout page talks to the vault directly)")
    r = httpx.post(
        f"{VAULT}/v1/tokens",
        json={"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        timeout=30,
    )
    body = show(r)
    return str(body["id"])


def pay(service: httpx.Client, token: str, amount: int) -> Any:
    return show(
        service.post(
            "/v1/payment_intents",
            json={
                "amount": amount,
                "currency": "USD",
                "payment_method": token,
                "confirm": True,
                "return_url": "https://marketplace.example/paid",
            },
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    )


def payments(run: str) -> None:
    try:
        httpx.get(f"{VAULT}/healthz", timeout=3).raise_for_status()
    except httpx.HTTPError:
        console.print(
            f"\n[yellow]The card vault is not answering on {VAULT}[/yellow] (started with "
            "--no-vault?): skipping the payments part."
        )
        return
    service = httpx.Client(
        base_url=BASE,
        headers={"Authorization": f"Bearer {new_key('service', 'demo')}"},
        timeout=60,
    )
    step(
        "10. Tokenize a card at the vault",
        "Only the vault (a separate process, its own database and keys) ever sees the number.",
    )
    ok = tokenize("4242 4242 4242 4242")
    step("11. Pay $50.00 with it", "Authorized, then captured: status succeeded.")
    pay(service, ok, 5_000)
    step("12. A card the bank declines", "200, back in requires_payment_method with the reason.")
    pay(service, tokenize("4000 0000 0000 0002"), 5_000)
    step(
        "13. A card whose bank asks for 3-D Secure",
        "requires_action with a challenge url; the cardholder passes it (here: a JSON POST)\n"
        "and the payment moves on by itself.",
    )
    challenged = pay(service, tokenize("4000 0027 6000 3184"), 7_500)
    url = challenged["next_action"]["url"]
    show(httpx.post(url, json={"result": "pass"}, timeout=30))
    status = challenged["status"]
    for _ in range(50):
        status = service.get(f"/v1/payment_intents/{challenged['id']}").json()["status"]
        if status == "succeeded":
            break
        time.sleep(0.2)
    console.print(f"  {challenged['id']} is now [bold]{status}[/bold]")
    step(
        "14. $193,500.00: two people must approve",
        "Over $10,000 a reviewer approves; over $100,000 two different reviewers (four-eyes).\n"
        "The card is authorized and held meanwhile; approval captures it.",
    )
    coin = pay(service, ok, 19_350_000)
    review = coin["review"]["id"]
    for n in (1, 2):
        reviewer = httpx.Client(
            base_url=BASE,
            headers={"Authorization": f"Bearer {new_key('reviewer', f'demo reviewer {n}')}"},
            timeout=60,
        )
        console.print(f"  reviewer {n} approves")
        show(
            reviewer.post(
                f"/v1/reviews/{review}/approve",
                json={"note": f"demo {run}: known collector"},
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
        )
    final = service.get(f"/v1/payment_intents/{coin['id']}").json()
    console.print(f"  {coin['id']} is now [bold]{final['status']}[/bold]")


if __name__ == "__main__":
    main()
