"""A fake of the Stripe API: just the endpoints :class:`StripeGateway` calls.

Built from Stripe's published API reference (form-encoded bodies with bracket notation, JSON
answers, ``Idempotency-Key`` semantics, the error object, the documented test cards). Endpoints:

* ``POST /v1/payment_intents`` (``confirm=true``), ``GET /v1/payment_intents/{id}``,
  ``POST …/{id}/capture`` (``amount_to_capture``), ``POST …/{id}/cancel``,
  ``GET /v1/payment_intents/search`` (``metadata['k']:'v'``), ``GET /v1/payment_intents``
  (``created[gte]``, ``limit``, ``starting_after``)
* ``POST /v1/refunds`` (and ``GET`` by ``payment_intent``), ``POST /v1/transfers`` (and ``GET``
  by ``transfer_group``)
* ``POST /_fake/3ds/{id}`` ``result=pass|fail``: what the cardholder's challenge page does

Idempotency (as documented): the first response to a key (status and body, errors included) is
stored and replayed with ``Idempotent-Replayed: true``; the same key with different parameters
or on another endpoint answers 400 ``idempotency_error``; a request failing validation stores
nothing. Test cards: 4242 4242 4242 4242 succeeds, …0002 ``card_declined``, …9995
``insufficient_funds``, 4000 0027 6000 3184 requires 3-D Secure, …0119 ``processing_error``; the
``pm_card_*`` test PaymentMethods map to them.

The Search API is eventually consistent at Stripe; ``search_lag = True`` makes the fake's
search find nothing, as right after a write. Faults for tests: :meth:`StripeFake.delay_next`
processes the next matching request normally (the charge is made, the response stored) and
then holds the answer past the client's timeout;
:meth:`StripeFake.fail_next` answers the next requests with a 5xx/429 before doing anything.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes._server import ServerThread

__all__ = ["API_KEY", "TEST_CARDS", "TEST_PAYMENT_METHODS", "StripeFake"]

API_KEY = "sk_test_hammerlock_fake"

# number -> (outcome, code, decline_code)
TEST_CARDS: dict[str, tuple[str, str | None, str | None]] = {
    "4242424242424242": ("success", None, None),
    "4000000000000002": ("decline", "card_declined", "generic_decline"),
    "4000000000009995": ("decline", "card_declined", "insufficient_funds"),
    "4000002760003184": ("3ds", None, None),
    "4000000000000119": ("decline", "processing_error", None),
}
TEST_PAYMENT_METHODS = {
    "pm_card_visa": "4242424242424242",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_authenticationRequired": "4000002760003184",
    "pm_card_chargeDeclinedProcessingError": "4000000000000119",
}
_MESSAGES = {
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
}
_SEARCH_RE = re.compile(r"metadata\['([^']+)'\]:'([^']*)'")


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket notation (``a[b][0]=v``) → nested dicts and lists."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", raw_key)
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            key = str(len(node)) if part == "[]" else part
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


class StripeError(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error


def _invalid(
    message: str, code: str = "parameter_invalid", param: str | None = None
) -> StripeError:
    return StripeError(
        400, {"type": "invalid_request_error", "code": code, "message": message, "param": param}
    )


@dataclass
class _Stored:
    endpoint: str
    params: dict[str, Any]
    status: int
    body: bytes


@dataclass
class _Fault:
    path_prefix: str
    remaining: int
    status: int = 0
    delay_s: float = 0.0


@dataclass
class FakeState:
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotency: dict[str, _Stored] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)


class StripeFake:
    """Start with :meth:`start`; point the SDK at :attr:`base_url`; count with the properties."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.search_lag = False  # True: the Search API has indexed nothing yet (it lags writes)
        self.refund_status = "succeeded"  # what a new refund answers first ("pending" happens)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._clock_s = time.time
        routes = [
            Route("/v1/payment_intents", self._intents_root, methods=["GET", "POST"]),
            Route("/v1/payment_intents/search", self._search, methods=["GET"]),
            Route("/v1/payment_intents/{id}", self._retrieve, methods=["GET"]),
            Route("/v1/payment_intents/{id}/capture", self._capture, methods=["POST"]),
            Route("/v1/payment_intents/{id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/refunds", self._refund, methods=["GET", "POST"]),
            Route("/v1/transfers", self._transfer, methods=["GET", "POST"]),
            Route("/_fake/3ds/{id}", self._three_d_secure, methods=["POST"]),
        ]
        self.app = Starlette(routes=routes)
        self._server = ServerThread(self.app)

    # --- lifecycle, faults and counters for tests -------------------------------------------

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def start(self) -> StripeFake:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def delay_next(
        self, delay_s: float, path_prefix: str = "/v1/payment_intents", n: int = 1
    ) -> None:
        """Process the next ``n`` matching requests, then hold each answer ``delay_s``."""
        self.state.faults.append(_Fault(path_prefix, n, delay_s=delay_s))

    def fail_next(self, status: int = 500, path_prefix: str = "/v1/", n: int = 1) -> None:
        """Answer the next ``n`` matching requests with ``status`` without processing them."""
        self.state.faults.append(_Fault(path_prefix, n, status=status))

    @property
    def intent_count(self) -> int:
        """PaymentIntents created (each confirmed once: one card charge attempt each)."""
        return len(self.state.intents)

    def charges_for(self, gateway_key: str) -> list[dict[str, Any]]:
        """Authorizations that went through (not declined) made under ``gateway_key``."""
        return [
            c
            for c in self.state.charges.values()
            if c["metadata"].get("hammerlock_gateway_key") == gateway_key and c["paid"]
        ]

    def intent(self, intent_id: str) -> dict[str, Any]:
        return self.state.intents[intent_id]

    # --- plumbing ---------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):08d}"

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self.state.faults:
                if path.startswith(fault.path_prefix) and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
        return None

    async def _handle(self, request: Request, action: Any) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _json(401, {"error": {"type": "invalid_request_error", "message": "bad key"}})
        path = request.url.path
        self.state.requests.append((request.method, path))
        fault = self._take_fault(path)
        if fault is not None and fault.status:
            return _json(fault.status, {"error": {"type": "api_error", "message": "fake fault"}})
        if request.method == "POST":
            params = parse_form(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        else:
            params = parse_form(parse_qsl(request.url.query, keep_blank_values=True))
        key = request.headers.get("idempotency-key")
        response = self._idempotent(key, f"{request.method} {path}", params, request, action)
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        return response

    def _idempotent(
        self, key: str | None, endpoint: str, params: dict[str, Any], request: Request, action: Any
    ) -> Response:
        with self._lock:
            if key is not None and request.method == "POST":
                stored = self.state.idempotency.get(key)
                if stored is not None:
                    if stored.endpoint != endpoint or stored.params != params:
                        return _json(
                            400,
                            {
                                "error": {
                                    "type": "idempotency_error",
                                    "message": "Keys for idempotent requests can only be "
                                    "used with the "
                                    "same parameters they were first used with.",
                                }
                            },
                        )
                    response = Response(stored.body, stored.status, media_type="application/json")
                    response.headers["Idempotent-Replayed"] = "true"
                    return response
            try:
                status, body = 200, action(request, params)
            except StripeError as error:
                if error.status == 400 and "payment_intent" not in error.error:
                    return _json(400, {"error": error.error})  # validation: nothing stored
                status, body = error.status, {"error": error.error}
            encoded = orjson.dumps(body)
            if key is not None and request.method == "POST":
                self.state.idempotency[key] = _Stored(endpoint, params, status, encoded)
            return Response(encoded, status, media_type="application/json")

    # --- objects ----------------------------------------------------------------------------

    def _render(self, intent: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        rendered = dict(intent)
        expand = params.get("expand") or []
        if "latest_charge" in expand or "data.latest_charge" in expand:
            charge_id = intent.get("latest_charge")
            rendered["latest_charge"] = self.state.charges.get(charge_id) if charge_id else None
        return rendered

    def _charge(self, intent: dict[str, Any], number: str, paid: bool) -> dict[str, Any]:
        charge = {
            "id": self._id("ch"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "currency": intent["currency"],
            "paid": paid,
            "captured": False,
            "payment_intent": intent["id"],
            "metadata": dict(intent["metadata"]),
            "payment_method_details": {
                "type": "card",
                "card": {
                    "brand": "visa",
                    "last4": number[-4:],
                    "country": "US",
                    "fingerprint": f"fp{number[-8:]}",
                },
            },
        }
        self.state.charges[charge["id"]] = charge
        intent["latest_charge"] = charge["id"]
        return charge

    # --- endpoints --------------------------------------------------------------------------

    async def _intents_root(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._handle(request, self._list)
        return await self._handle(request, self._create)

    def _card_number(self, params: dict[str, Any]) -> str:
        if "payment_method" in params:
            number = TEST_PAYMENT_METHODS.get(params["payment_method"])
            if number is None:
                raise _invalid("No such PaymentMethod", "resource_missing", "payment_method")
            return number
        data = params.get("payment_method_data") or {}
        if data.get("type") != "card" or "number" not in (data.get("card") or {}):
            raise _invalid("Missing payment method", "parameter_missing", "payment_method")
        return str(data["card"]["number"])

    def _create(self, request: Request, params: dict[str, Any]) -> dict[str, Any]:
        amount = int(params.get("amount", "0"))
        if amount < 50:
            raise _invalid("Amount must be at least 50 cents", "amount_too_small", "amount")
        if params.get("confirm") != "true":
            raise _invalid("This fake only supports confirm=true", param="confirm")
        number = self._card_number(params)
        outcome, code, decline_code = TEST_CARDS.get(number, ("success", None, None))
        intent: dict[str, Any] = {
            "id": self._id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "currency": params["currency"],
            "capture_method": params.get("capture_method", "automatic"),
            "created": int(self._clock_s()),
            "description": params.get("description"),
            "metadata": params.get("metadata") or {},
            "status": "requires_payment_method",
            "last_payment_error": None,
            "next_action": None,
            "latest_charge": None,
            "return_url": params.get("return_url"),
            "_number": number,
        }
        self.state.intents[intent["id"]] = intent
        three_ds = (params.get("payment_method_options") or {}).get("card") or {}
        if outcome == "3ds" or three_ds.get("request_three_d_secure") == "challenge":
            intent["status"] = "requires_action"
            intent["next_action"] = self._next_action(request, intent)
            return self._public(intent, params)
        if outcome == "decline":
            return self._decline(intent, number, str(code), decline_code, params)
        self._authorize(intent, number)
        return self._public(intent, params)

    def _next_action(self, request: Request, intent: dict[str, Any]) -> dict[str, Any]:
        if not intent["return_url"]:
            return {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
        url = f"{request.base_url}_fake/3ds/{intent['id']}"
        return {
            "type": "redirect_to_url",
            "redirect_to_url": {"url": url, "return_url": intent["return_url"]},
        }

    def _authorize(self, intent: dict[str, Any], number: str) -> None:
        charge = self._charge(intent, number, paid=True)
        if intent["capture_method"] == "manual":
            intent["status"] = "requires_capture"
            intent["amount_capturable"] = intent["amount"]
        else:
            intent["status"] = "succeeded"
            intent["amount_received"] = intent["amount"]
            charge["captured"] = True
            charge["amount_captured"] = intent["amount"]

    def _decline(
        self,
        intent: dict[str, Any],
        number: str,
        code: str,
        decline_code: str | None,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        charge = self._charge(intent, number, paid=False)
        error = {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": _MESSAGES.get(decline_code or code, _MESSAGES["card_declined"]),
            "charge": charge["id"],
        }
        intent["last_payment_error"] = error
        raise StripeError(402, {**error, "payment_intent": self._public(intent, params)})

    def _public(self, intent: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        rendered = self._render(intent, params)
        return {k: v for k, v in rendered.items() if not k.startswith("_")}

    def _get(self, intent_id: str) -> dict[str, Any]:
        intent = self.state.intents.get(intent_id)
        if intent is None:
            raise StripeError(
                404,
                {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "message": f"No such payment_intent: '{intent_id}'",
                },
            )
        return intent

    async def _retrieve(self, request: Request) -> Response:
        intent_id = request.path_params["id"]
        return await self._handle(request, lambda _r, p: self._public(self._get(intent_id), p))

    async def _search(self, request: Request) -> Response:
        def action(_r: Request, params: dict[str, Any]) -> dict[str, Any]:
            match = _SEARCH_RE.fullmatch(params.get("query", ""))
            if match is None:
                raise _invalid("This fake only searches metadata['k']:'v'", param="query")
            name, value = match.groups()
            data = [
                self._public(
                    i, {"expand": [e.removeprefix("data.") for e in params.get("expand", [])]}
                )
                for i in self.state.intents.values()
                if i["metadata"].get(name) == value and not self.search_lag
            ]
            return {
                "object": "search_result",
                "data": data,
                "has_more": False,
                "url": "/v1/payment_intents/search",
            }

        return await self._handle(request, action)

    def _list(self, _request: Request, params: dict[str, Any]) -> dict[str, Any]:
        gte = int((params.get("created") or {}).get("gte", 0))
        limit = min(int(params.get("limit", 10)), 100)
        newest_first = sorted(
            (i for i in self.state.intents.values() if i["created"] >= gte),
            key=lambda i: i["id"],
            reverse=True,
        )
        after = params.get("starting_after")
        if after:
            ids = [i["id"] for i in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        expand = {"expand": [e.removeprefix("data.") for e in params.get("expand", [])]}
        page = [self._public(i, expand) for i in newest_first[:limit]]
        return {
            "object": "list",
            "data": page,
            "has_more": len(newest_first) > limit,
            "url": "/v1/payment_intents",
        }

    async def _capture(self, request: Request) -> Response:
        intent_id = request.path_params["id"]

        def action(_r: Request, params: dict[str, Any]) -> dict[str, Any]:
            intent = self._get(intent_id)
            if intent["status"] != "requires_capture":
                raise _unexpected_state(intent, "capture")
            amount = int(params.get("amount_to_capture", intent["amount_capturable"]))
            if not 0 < amount <= intent["amount_capturable"]:
                raise _invalid(
                    "amount_to_capture exceeds the capturable amount", param="amount_to_capture"
                )
            intent["status"] = "succeeded"
            intent["amount_received"] = amount
            intent["amount_capturable"] = 0
            charge = self.state.charges[intent["latest_charge"]]
            charge["captured"] = True
            charge["amount_captured"] = amount
            return self._public(intent, params)

        return await self._handle(request, action)

    async def _cancel(self, request: Request) -> Response:
        intent_id = request.path_params["id"]

        def action(_r: Request, params: dict[str, Any]) -> dict[str, Any]:
            intent = self._get(intent_id)
            if intent["status"] in {"succeeded", "canceled"}:
                raise _unexpected_state(intent, "cancel")
            intent["status"] = "canceled"
            intent["amount_capturable"] = 0
            return self._public(intent, params)

        return await self._handle(request, action)

    def _refund_action(self, _r: Request, params: dict[str, Any]) -> dict[str, Any]:
        intent = self._get(params.get("payment_intent", ""))
        if intent["status"] != "succeeded":
            raise _invalid(
                "This PaymentIntent has no successful charge to refund", "charge_not_refundable"
            )
        charge = self.state.charges[intent["latest_charge"]]
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        amount = int(params.get("amount", remaining))
        if not 0 < amount <= remaining:
            raise _invalid(
                f"Refund amount ({amount}) is greater than unrefunded amount ({remaining})",
                "amount_too_large",
                "amount",
            )
        charge["amount_refunded"] += amount
        refund = {
            "id": self._id("re"),
            "object": "refund",
            "amount": amount,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "charge": charge["id"],
            "metadata": params.get("metadata") or {},
            "status": self.refund_status,
        }
        self.state.refunds[refund["id"]] = refund
        return refund

    def _refund_list(self, _r: Request, params: dict[str, Any]) -> dict[str, Any]:
        limit = min(int(params.get("limit", 10)), 100)
        data = [
            r
            for r in self.state.refunds.values()
            if r["payment_intent"] == params.get("payment_intent", r["payment_intent"])
        ]
        return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}

    async def _refund(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._handle(request, self._refund_list)
        return await self._handle(request, self._refund_action)

    def _transfer_action(self, _r: Request, params: dict[str, Any]) -> dict[str, Any]:
        destination = params.get("destination", "")
        if not destination.startswith("acct_"):
            raise _invalid(
                f"No such destination: '{destination}'", "resource_missing", "destination"
            )
        transfer = {
            "id": self._id("tr"),
            "object": "transfer",
            "amount": int(params["amount"]),
            "currency": params["currency"],
            "destination": destination,
            "metadata": params.get("metadata") or {},
            "transfer_group": params.get("transfer_group"),
            "reversed": False,
            "amount_reversed": 0,
        }
        self.state.transfers[transfer["id"]] = transfer
        return transfer

    def _transfer_list(self, _r: Request, params: dict[str, Any]) -> dict[str, Any]:
        limit = min(int(params.get("limit", 10)), 100)
        group = params.get("transfer_group")
        data = [
            t
            for t in self.state.transfers.values()
            if group is None or t.get("transfer_group") == group
        ]
        return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}

    async def _transfer(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._handle(request, self._transfer_list)
        return await self._handle(request, self._transfer_action)

    async def _three_d_secure(self, request: Request) -> Response:
        """The challenge page's buttons: ``result=pass`` authorizes, ``fail`` declines."""
        intent = self.state.intents.get(request.path_params["id"])
        form = parse_form(parse_qsl((await request.body()).decode()))
        if intent is None or intent["status"] != "requires_action":
            return _json(404, {"error": {"message": "no challenge pending"}})
        intent["next_action"] = None
        if form.get("result") == "pass":
            self._authorize(intent, intent["_number"])
        else:
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = {
                "type": "card_error",
                "code": "payment_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication.",
            }
        return _json(200, self._public(intent, {}))


def _unexpected_state(intent: dict[str, Any], action: str) -> StripeError:
    return StripeError(
        400,
        {
            "type": "invalid_request_error",
            "code": "payment_intent_unexpected_state",
            "message": f"You cannot {action} this PaymentIntent because it has a status of "
            f"{intent['status']}.",
            "payment_intent": {k: v for k, v in intent.items() if not k.startswith("_")},
        },
    )


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")
