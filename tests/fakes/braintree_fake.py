"""A fake of Braintree's XML gateway API: the transaction endpoints :class:`BraintreeGateway` calls.

Built from Braintree's published reference (the XML request and response shapes the SDK
sends and parses, transaction statuses, processor response codes, escrow statuses, validation
error codes). All paths live under ``/merchants/{merchant_id}``:

* ``POST /transactions`` (sale; ``options.submit_for_settlement``, ``options.hold_in_escrow``,
  ``service_fee_amount``, ``order_id``), ``GET /transactions/{id}``
* ``PUT /transactions/{id}/submit_for_settlement`` (``amount``), ``PUT …/void``,
  ``POST …/refund`` (``amount``, ``order_id``), ``PUT …/release_from_escrow``
* ``POST /transactions/advanced_search_ids`` and ``/advanced_search`` (``order_id`` ``is``)

Test values: Braintree's 4111 1111 1111 1111 succeeds and 4000 1111 1111 1115 is processor
declined (2000); sandbox amounts 2000.00-2999.99 decline with that processor response code and
3000.00 fails (3000). So that one contract suite can drive every adapter, Stripe's test card
numbers map onto Braintree outcomes too: …0002 → 2046 Declined, …9995 → 2001 Insufficient
Funds, 4000 0027 6000 3184 → gateway rejected ``three_d_secure``, …0119 → 3000 processor network
unavailable. Nonces: ``fake-valid-nonce`` (4111…), ``fake-processor-declined-visa-nonce`` (2000).

Duplicate transaction checking, on by default at Braintree: a sale with the same amount,
``order_id`` and card as a successful one in the last ``duplicate_window_s`` (30 s) is gateway
rejected with reason ``duplicate``. Every transaction keeps its ``status_history`` (each event
with its amount, so the authorized amount survives a partial settlement).

With ``settle_immediately`` (the default, like calling the sandbox's ``testing.settle``)
a transaction submitted for settlement is ``settled`` at once, and an escrow hold becomes
``held``. Faults, by operation (``create``, ``search``, ``find``, ``settle``, ``void``,
``refund``, ``release``): :meth:`BraintreeFake.delay_next` processes the next such request and
then holds the answer past the client's timeout; :meth:`BraintreeFake.fail_next` answers 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from braintree.util.generator import Generator
from braintree.util.parser import Parser
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes._server import ServerThread

__all__ = ["MERCHANT_ID", "PRIVATE_KEY", "PUBLIC_KEY", "SUB_MERCHANT_ID", "BraintreeFake"]

MERCHANT_ID = "hammerlockmerchant"
PUBLIC_KEY = "fakepublickey"
PRIVATE_KEY = "fakeprivatekey"
SUB_MERCHANT_ID = "seller_sub_merchant"
MASTER_MERCHANT_ACCOUNT_ID = "hammerlock_master"

# number -> (status, processor response code, text, gateway rejection reason)
_OUTCOMES: dict[str, tuple[str, str, str, str | None]] = {
    "4111111111111111": ("ok", "1000", "Approved", None),
    "4242424242424242": ("ok", "1000", "Approved", None),
    "4000111111111115": ("processor_declined", "2000", "Do Not Honor", None),
    "4000000000000002": ("processor_declined", "2046", "Declined", None),
    "4000000000009995": ("processor_declined", "2001", "Insufficient Funds", None),
    "4000002760003184": ("gateway_rejected", "", "", "three_d_secure"),
    "4000000000000119": ("failed", "3000", "Processor Network Unavailable - Try Again", None),
}
NONCES = {
    "fake-valid-nonce": "4111111111111111",
    "fake-valid-visa-nonce": "4111111111111111",
    "fake-processor-declined-visa-nonce": "4000111111111115",
}


def to_xml(root: str, body: dict[str, Any]) -> bytes:
    xml = '<?xml version="1.0" encoding="UTF-8"?>' + Generator({root: body}).generate()
    return xml.encode()


def _error(code: str, message: str, attribute: str = "base") -> dict[str, Any]:
    return {
        "errors": {
            "errors": [],
            "transaction": {"errors": [{"code": code, "attribute": attribute, "message": message}]},
        },
        "message": message,
    }


@dataclass
class _Fault:
    operation: str
    remaining: int
    status: int = 0
    delay_s: float = 0.0


@dataclass
class FakeState:
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)


class BraintreeFake:
    def __init__(self, *, settle_immediately: bool = True, duplicate_window_s: float = 30) -> None:
        self.settle_immediately = settle_immediately
        self.duplicate_window = timedelta(seconds=duplicate_window_s)
        self.state = FakeState()
        self.blind_searches = 0  # the next N searches find nothing (a search racing a write)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        base = "/merchants/{merchant}/transactions"
        routes = [
            Route(base, self._create, methods=["POST"]),
            Route(base + "/advanced_search_ids", self._search_ids, methods=["POST"]),
            Route(base + "/advanced_search", self._search, methods=["POST"]),
            Route(base + "/{id}", self._find, methods=["GET"]),
            Route(base + "/{id}/submit_for_settlement", self._settle, methods=["PUT"]),
            Route(base + "/{id}/void", self._void, methods=["PUT"]),
            Route(base + "/{id}/refund", self._refund, methods=["POST"]),
            Route(base + "/{id}/release_from_escrow", self._release, methods=["PUT"]),
        ]
        self.app = Starlette(routes=routes)
        self._server = ServerThread(self.app)

    # --- lifecycle, faults and counters for tests -------------------------------------------

    @property
    def host(self) -> str:
        return self._server.base_url

    def start(self) -> BraintreeFake:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def delay_next(self, delay_s: float, operation: str = "create", n: int = 1) -> None:
        self.state.faults.append(_Fault(operation, n, delay_s=delay_s))

    def fail_next(self, status: int = 500, operation: str = "create", n: int = 1) -> None:
        self.state.faults.append(_Fault(operation, n, status=status))

    def transactions_for(self, order_id: str, kind: str = "sale") -> list[dict[str, Any]]:
        """Every transaction of ``kind`` under ``order_id``, declined ones included."""
        return [
            t
            for t in self.state.transactions.values()
            if t["order_id"] == order_id and t["type"] == kind
        ]

    def sales_for(self, order_id: str) -> list[dict[str, Any]]:
        """Sales under ``order_id`` that went through (not declined or rejected)."""
        good = {"authorized", "submitted_for_settlement", "settling", "settled", "voided"}
        return [
            t
            for t in self.state.transactions.values()
            if t["order_id"] == order_id and t["type"] == "sale" and t["status"] in good
        ]

    def transaction(self, transaction_id: str) -> dict[str, Any]:
        return self.state.transactions[transaction_id]

    def settle(self, transaction_id: str) -> None:
        """What the sandbox's ``testing.settle`` does."""
        self._settled(self.state.transactions[transaction_id])

    def sign(self, payload: bytes) -> str:
        """``bt_signature`` for a ``bt_payload`` (HMAC-SHA1 keyed with SHA1(private key))."""
        key = hashlib.sha1(PRIVATE_KEY.encode()).digest()  # noqa: S324  # Braintree's scheme
        return f"{PUBLIC_KEY}|{hmac.new(key, payload, hashlib.sha1).hexdigest()}"

    def notification(self, kind: str, transaction_id: str, timestamp: datetime) -> dict[str, str]:
        """A signed webhook (form fields) about one of the fake's transactions."""
        tx = self._public(self.state.transactions[transaction_id])
        xml = to_xml(
            "notification", {"timestamp": timestamp, "kind": kind, "subject": {"transaction": tx}}
        )
        payload = base64.encodebytes(xml)
        return {"bt_signature": self.sign(payload), "bt_payload": payload.decode()}

    # --- plumbing ---------------------------------------------------------------------------

    def _take_fault(self, operation: str) -> _Fault | None:
        with self._lock:
            for fault in self.state.faults:
                if fault.operation == operation and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
        return None

    async def _handle(self, request: Request, action: Any, operation: str) -> Response:
        expected = base64.b64encode(f"{PUBLIC_KEY}:{PRIVATE_KEY}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return Response(b"", 401)
        if request.path_params["merchant"] != MERCHANT_ID:
            return Response(b"", 404)
        self.state.requests.append((request.method, request.url.path))
        fault = self._take_fault(operation)
        if fault is not None and fault.status:
            return Response(b"", fault.status)
        raw = await request.body()
        params = Parser(raw).parse() if raw.strip() else {}
        with self._lock:
            root, body, status = action(request, params)
        response = Response(to_xml(root, body), status, media_type="application/xml")
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        return response

    def _get(self, request: Request) -> dict[str, Any] | None:
        return self.state.transactions.get(request.path_params["id"])

    def _public(self, tx: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in tx.items() if not k.startswith("_")}

    def _ok(self, tx: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
        return "transaction", self._public(tx), 200

    def _fail(
        self, code: str, message: str, tx: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any], int]:
        body = _error(code, message)
        if tx is not None:
            body["transaction"] = self._public(tx)
        return "api-error-response", body, 422

    def _new_id(self) -> str:
        return f"bt{next(self._ids):06d}"

    def _status(self, tx: dict[str, Any], status: str) -> None:
        tx["status"] = status
        tx["updated_at"] = datetime.now(UTC)
        event = {"status": status, "amount": tx["amount"], "timestamp": tx["updated_at"]}
        tx["status_history"] = [*tx.get("status_history", []), event]

    def _duplicate_of(self, order_id: str | None, amount: str, number: str) -> bool:
        if order_id is None:
            return False
        since = datetime.now(UTC) - self.duplicate_window
        good = {"authorized", "submitted_for_settlement", "settling", "settled", "voided"}
        return any(
            t["order_id"] == order_id
            and t["amount"] == amount
            and t["_number"] == number
            and t["status"] in good
            and t["created_at"] >= since
            for t in self.state.transactions.values()
            if t["type"] == "sale"
        )

    def _settled(self, tx: dict[str, Any]) -> None:
        if tx["status"] == "submitted_for_settlement":
            self._status(tx, "settled")
            if tx.get("escrow_status") == "hold_pending":
                tx["escrow_status"] = "held"

    # --- endpoints --------------------------------------------------------------------------

    def _card(self, params: dict[str, Any]) -> tuple[str, str, str] | None:
        nonce = params.get("payment_method_nonce")
        if nonce is not None:
            number = NONCES.get(nonce)
            return None if number is None else (number, "12", "2030")
        card = params.get("credit_card") or {}
        if not card.get("number"):
            return None
        return card["number"], card.get("expiration_month", ""), card.get("expiration_year", "")

    def _create_action(
        self, _request: Request, params: dict[str, Any]
    ) -> tuple[str, dict[str, Any], int]:
        p = params.get("transaction") or {}
        amount = Decimal(p.get("amount") or "0")
        if amount <= 0:
            return self._fail("81503", "Amount must be greater than zero.")
        card = self._card(p)
        if card is None:
            return self._fail("91508", "Cannot determine payment method.")
        options = p.get("options") or {}
        fee = p.get("service_fee_amount")
        account = p.get("merchant_account_id") or MASTER_MERCHANT_ACCOUNT_ID
        if fee is not None and account == MASTER_MERCHANT_ACCOUNT_ID:
            return self._fail("91557", "Service fee not allowed on master merchant account.")
        if fee is not None and not Decimal(0) <= Decimal(fee) <= amount:
            return self._fail("91556", "Service fee amount is too large.")
        if options.get("hold_in_escrow") and account == MASTER_MERCHANT_ACCOUNT_ID:
            return self._fail("91560", "Transaction could not be held in escrow.")
        number, month, year = card
        outcome, code, text, reason = _OUTCOMES.get(number, ("ok", "1000", "Approved", None))
        if outcome == "ok" and Decimal(2000) <= amount < Decimal(3000):
            outcome, code, text = "processor_declined", str(int(amount)), "Processor Declined"
        elif outcome == "ok" and Decimal(3000) <= amount < Decimal(3001):
            outcome, code, text = "failed", "3000", "Processor Network Unavailable - Try Again"
        three_ds = (options.get("three_d_secure") or {}).get("required")
        if outcome == "ok" and three_ds is True:
            outcome, reason = "gateway_rejected", "three_d_secure"
        if self._duplicate_of(p.get("order_id"), format(amount, "f"), number):
            outcome, code, text, reason = "gateway_rejected", "", "", "duplicate"
        tx: dict[str, Any] = {
            "id": self._new_id(),
            "type": "sale",
            "status": "",
            "_number": number,
            "amount": format(amount, "f"),
            "currency_iso_code": "USD",
            "merchant_account_id": account,
            "order_id": p.get("order_id"),
            "created_at": datetime.now(UTC),
            "updated_at": datetime.now(UTC),
            "processor_response_code": code,
            "processor_response_text": text,
            "processor_response_type": "approved" if outcome == "ok" else "soft_declined",
            "gateway_rejection_reason": reason,
            "service_fee_amount": fee,
            "escrow_status": None,
            "refund_ids": [],
            "refunded_transaction_id": None,
            "credit_card": {
                "bin": number[:6],
                "last_4": number[-4:],
                "card_type": "Visa",
                "expiration_month": month,
                "expiration_year": year,
                "unique_number_identifier": hashlib.sha256(number.encode()).hexdigest()[:32],
                "country_of_issuance": "USA",
            },
        }
        self.state.transactions[tx["id"]] = tx
        self._status(tx, "authorized" if outcome == "ok" else outcome)
        if outcome != "ok":
            return self._fail("", text or "Gateway Rejected: " + str(reason), tx)
        if options.get("hold_in_escrow"):
            tx["escrow_status"] = "hold_pending"
        if options.get("submit_for_settlement"):
            self._status(tx, "submitted_for_settlement")
            if self.settle_immediately:
                self._settled(tx)
        return self._ok(tx)

    async def _create(self, request: Request) -> Response:
        return await self._handle(request, self._create_action, "create")

    async def _find(self, request: Request) -> Response:
        def action(r: Request, _p: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
            tx = self._get(r)
            if tx is None:
                return "error", {}, 404
            return self._ok(tx)

        return await self._not_found_empty(request, action, "find")

    def _settle_action(self, r: Request, params: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
        tx = self._get(r)
        if tx is None:
            return "error", {}, 404
        if tx["status"] != "authorized":
            return self._fail("91507", "Cannot submit for settlement unless status is authorized.")
        amount = (params.get("transaction") or {}).get("amount")
        if amount is not None:
            if Decimal(amount) > Decimal(tx["amount"]):
                return self._fail("91522", "Settlement amount is too large.")
            tx["amount"] = format(Decimal(amount), "f")
        self._status(tx, "submitted_for_settlement")
        if self.settle_immediately:
            self._settled(tx)
        return self._ok(tx)

    async def _settle(self, request: Request) -> Response:
        return await self._not_found_empty(request, self._settle_action, "settle")

    def _void_action(self, r: Request, _p: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
        tx = self._get(r)
        if tx is None:
            return "error", {}, 404
        if tx["status"] not in {"authorized", "submitted_for_settlement"}:
            return self._fail(
                "91504",
                "Transaction can only be voided if status is authorized or "
                "submitted_for_settlement.",
            )
        self._status(tx, "voided")
        return self._ok(tx)

    async def _void(self, request: Request) -> Response:
        return await self._not_found_empty(request, self._void_action, "void")

    def _refund_action(self, r: Request, params: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
        tx = self._get(r)
        if tx is None:
            return "error", {}, 404
        if tx["status"] not in {"settled", "settling"}:
            return self._fail("91506", "Cannot refund a transaction unless it is settled.")
        p = params.get("transaction") or {}
        refunded = sum(Decimal(self.state.transactions[i]["amount"]) for i in tx["refund_ids"])
        amount = Decimal(p.get("amount") or tx["amount"])
        if amount + refunded > Decimal(tx["amount"]):
            return self._fail("91521", "Refund amount is too large.")
        refund = {
            **tx,
            "id": self._new_id(),
            "type": "credit",
            "status": "submitted_for_settlement",
            "status_history": [],
            "amount": format(amount, "f"),
            "order_id": p.get("order_id"),
            "refunded_transaction_id": tx["id"],
            "refund_ids": [],
            "service_fee_amount": None,
            "escrow_status": None,
            "created_at": datetime.now(UTC),
        }
        self.state.transactions[refund["id"]] = refund
        tx["refund_ids"] = [*tx["refund_ids"], refund["id"]]
        if tx.get("escrow_status") in {"held", "hold_pending"}:
            tx["escrow_status"] = "refunded"
        return self._ok(refund)

    async def _refund(self, request: Request) -> Response:
        return await self._not_found_empty(request, self._refund_action, "refund")

    def _release_action(self, r: Request, _p: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
        tx = self._get(r)
        if tx is None:
            return "error", {}, 404
        if tx.get("escrow_status") != "held":
            return self._fail("91561", "Cannot release a transaction that is not escrowed.")
        tx["escrow_status"] = "release_pending"
        return self._ok(tx)

    async def _release(self, request: Request) -> Response:
        return await self._not_found_empty(request, self._release_action, "release")

    async def _not_found_empty(self, request: Request, action: Any, operation: str) -> Response:
        response = await self._handle(request, action, operation)
        return Response(b"", 404) if response.status_code == 404 else response

    def _matching(self, criteria: dict[str, Any]) -> list[dict[str, Any]]:
        order = (criteria.get("order_id") or {}).get("is")
        ids = criteria.get("ids")
        found = []
        for tx in self.state.transactions.values():
            if order is not None and tx["order_id"] != order:
                continue
            if ids is not None and tx["id"] not in ids:
                continue
            found.append(tx)
        return found

    async def _search_ids(self, request: Request) -> Response:
        def action(_r: Request, params: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
            ids = [t["id"] for t in self._matching(params.get("search") or {})]
            if self.blind_searches > 0:
                self.blind_searches -= 1
                ids = []
            return "search_results", {"page_size": 50, "ids": ids}, 200

        return await self._handle(request, action, "search")

    async def _search(self, request: Request) -> Response:
        def action(_r: Request, params: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
            txs = [self._public(t) for t in self._matching(params.get("search") or {})]
            return "credit_card_transactions", {"transaction": txs}, 200

        return await self._handle(request, action, "search")
