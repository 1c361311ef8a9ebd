"""Every route x every role (and no key), against a matrix written out by hand.

The matrix is deliberately NOT derived from ``security.permissions`` or the routes' declared
policies: it is what ../shared/DESIGN.md ("Who may do what") and the ledger issue say, typed in
again. A route that exists but is missing here fails the test, as does a role added to the code
but not to ``ROLES``. Runs on SQLite and PostgreSQL (about 150 requests per backend).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.routing import BaseRoute, Mount, Route

from hammerlock.auctions.service import NewLot
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.model import OrderTerms
from hammerlock.escrow.service import open_order
from hammerlock.ledger import service as ledger_service
from hammerlock.ledger.model import AccountFlag, AccountInput, TransferInput
from hammerlock.parties import service as parties_service
from hammerlock.parties.model import PartyKind
from hammerlock.payments.model import CaptureMethod, RefundReason
from hammerlock.payments.service import NewIntent, NewRefund
from hammerlock.security.permissions import Role
from hammerlock.webhooks import service as webhooks_service
from tests.conftest import Keys
from tests.payments.fake_gateway import FakeGateway

PROBLEM = "application/problem+json"

ROLES = ("admin", "operator", "reviewer", "auditor", "seller", "bidder", "service")
EVERYONE = frozenset({*ROLES, "anonymous"})
ADMIN = frozenset({"admin"})
LEDGER_WRITERS = frozenset({"admin", "operator", "service"})
LEDGER_READERS = frozenset({"admin", "operator", "service", "auditor"})
ACCOUNT_CLOSERS = frozenset({"admin", "operator"})
AUDITORS = frozenset({"admin", "auditor"})  # issue #4: "auditor and admin only"
PAYERS = frozenset({"admin", "service"})
PAYMENT_READERS = frozenset({"admin", "operator", "reviewer", "service"})
REFUNDERS = frozenset({"admin", "operator", "service"})
REVIEW_READERS = frozenset({"admin", "operator", "reviewer"})
REVIEW_DECIDERS = frozenset({"admin", "reviewer"})
WEBHOOK_READERS = frozenset({"admin", "operator"})  # issue #5: an admin route; operators run it
# issue #6 "Parties"/"Auctions" + DESIGN.md: the service registers parties and acts for them;
# a bidder's own key bids and holds cards; a seller's own key creates and opens its lots.
PARTY_REGISTRARS = frozenset({"admin", "operator", "service"})
CARD_WRITERS = frozenset({"admin", "operator", "service", "bidder"})
LOT_WRITERS = frozenset({"admin", "operator", "service", "seller"})
LOT_READERS = frozenset({"admin", "operator", "service", "seller", "bidder"})
BIDDERS = frozenset({"admin", "service", "bidder"})
LOT_CLOSERS = frozenset({"admin", "operator"})
# issue #6 / DESIGN.md: bidders and sellers act on their own orders; the service on their behalf
ORDER_READERS = frozenset({"admin", "operator", "seller", "bidder", "service"})
ORDER_BUYERS = frozenset({"admin", "bidder", "service"})  # pay, confirm, accept, dispute
ORDER_SHIPPERS = frozenset({"admin", "seller", "service"})
ORDER_RESOLVERS = frozenset({"admin", "operator"})  # operators resolve disputes
# a seller names its own payout destination; staff and the service may set it for a seller
PAYOUT_DESTINATION_WRITERS = frozenset({"admin", "operator", "service", "seller"})

# (method, path template) -> (who may call it, the status an allowed call answers here)
MATRIX: dict[tuple[str, str], tuple[frozenset[str], int]] = {
    ("GET", "/healthz"): (EVERYONE, 200),
    ("GET", "/readyz"): (EVERYONE, 200),
    ("GET", "/openapi.json"): (EVERYONE, 200),
    ("GET", "/docs"): (EVERYONE, 200),
    ("GET", "/docs/assets/{path}"): (EVERYONE, 200),
    ("GET", "/v1/keys"): (ADMIN, 200),
    ("POST", "/v1/keys"): (ADMIN, 201),
    ("POST", "/v1/keys/{key_id}/revoke"): (ADMIN, 200),
    ("POST", "/v1/ledger/accounts"): (LEDGER_WRITERS, 200),
    ("GET", "/v1/ledger/accounts/{account_id}"): (LEDGER_READERS, 200),
    ("POST", "/v1/ledger/accounts/{account_id}/close"): (ACCOUNT_CLOSERS, 200),
    ("GET", "/v1/ledger/accounts/{account_id}/transfers"): (LEDGER_READERS, 200),
    ("POST", "/v1/ledger/transfers"): (LEDGER_WRITERS, 200),
    ("GET", "/v1/ledger/transfers/{transfer_id}"): (LEDGER_READERS, 200),
    ("GET", "/v1/audit/events"): (AUDITORS, 200),
    ("GET", "/v1/audit/tree_head"): (AUDITORS, 200),
    ("GET", "/v1/audit/tree_heads"): (AUDITORS, 200),
    ("GET", "/v1/audit/proof/inclusion"): (AUDITORS, 200),
    ("GET", "/v1/audit/proof/consistency"): (AUDITORS, 200),
    ("GET", "/v1/audit/public_keys"): (AUDITORS, 200),
    ("GET", "/v1/webhook_events"): (WEBHOOK_READERS, 200),
    ("GET", "/v1/webhook_events/{event_id}"): (WEBHOOK_READERS, 200),
    ("POST", "/v1/payment_intents"): (PAYERS, 200),
    ("GET", "/v1/payment_intents/{intent_id}"): (PAYMENT_READERS, 200),
    ("POST", "/v1/payment_intents/{intent_id}/confirm"): (PAYERS, 200),
    ("POST", "/v1/payment_intents/{intent_id}/capture"): (PAYERS, 200),
    ("POST", "/v1/payment_intents/{intent_id}/cancel"): (PAYERS, 200),
    ("POST", "/v1/refunds"): (REFUNDERS, 200),
    ("GET", "/v1/refunds/{refund_id}"): (PAYMENT_READERS, 200),
    ("GET", "/v1/reviews"): (REVIEW_READERS, 200),
    ("GET", "/v1/reviews/{review_id}"): (REVIEW_READERS, 200),
    ("POST", "/v1/reviews/{review_id}/approve"): (REVIEW_DECIDERS, 200),
    ("POST", "/v1/reviews/{review_id}/reject"): (REVIEW_DECIDERS, 200),
    ("GET", "/v1/orders/{order_id}"): (ORDER_READERS, 200),
    ("POST", "/v1/orders/{order_id}/pay"): (ORDER_BUYERS, 200),
    ("POST", "/v1/orders/{order_id}/ship"): (ORDER_SHIPPERS, 200),
    ("POST", "/v1/orders/{order_id}/confirm_delivery"): (ORDER_BUYERS, 200),
    ("POST", "/v1/orders/{order_id}/accept"): (ORDER_BUYERS, 200),
    ("POST", "/v1/orders/{order_id}/dispute"): (ORDER_BUYERS, 200),
    ("POST", "/v1/orders/{order_id}/resolve"): (ORDER_RESOLVERS, 200),
    ("POST", "/v1/orders/{order_id}/refund"): (ORDER_RESOLVERS, 200),
    ("POST", "/v1/orders/{order_id}/cancel"): (ORDER_RESOLVERS, 200),
    ("POST", "/v1/orders/{order_id}/payout"): (ORDER_RESOLVERS, 200),
    ("POST", "/v1/orders/{order_id}/second_chance/accept"): (ORDER_BUYERS, 201),
    ("POST", "/v1/bidders"): (PARTY_REGISTRARS, 201),
    ("POST", "/v1/sellers"): (PARTY_REGISTRARS, 201),
    ("PUT", "/v1/sellers/{seller_id}/payout_destination"): (PAYOUT_DESTINATION_WRITERS, 200),
    ("POST", "/v1/bidders/{bidder_id}/cards"): (CARD_WRITERS, 201),
    ("POST", "/v1/lots"): (LOT_WRITERS, 201),
    ("POST", "/v1/lots/{lot_id}/open"): (LOT_WRITERS, 200),
    ("GET", "/v1/lots/{lot_id}"): (LOT_READERS, 200),
    ("POST", "/v1/lots/{lot_id}/bids"): (BIDDERS, 201),
    ("GET", "/v1/lots/{lot_id}/bids"): (LOT_READERS, 200),
    ("POST", "/v1/lots/{lot_id}/bids/{bid_id}/retract"): (ADMIN, 200),
    ("POST", "/v1/lots/{lot_id}/buy_now"): (BIDDERS, 200),
    ("POST", "/v1/lots/{lot_id}/close"): (LOT_CLOSERS, 200),
    ("POST", "/v1/lots/{lot_id}/deposits"): (BIDDERS, 200),
    # Public, but verified by the gateway's signature: an unsigned call is 400 for everyone.
    ("POST", "/v1/webhooks/{gateway}"): (EVERYONE, 400),
    # Admin only; this test runs without a card vault, so the allowed call answers 503.
    ("GET", "/v1/sandbox/charges"): (ADMIN, 503),
}


def _flatten(routes: Iterable[BaseRoute]) -> Iterator[tuple[str, BaseRoute]]:
    """(full path, route) for every route, looking inside included routers (FastAPI keeps them
    as lazy ``_IncludedRouter`` entries whose routes carry the combined prefix)."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for ctx in contexts():
                yield ctx.path, ctx.original_route
        else:
            yield getattr(route, "path", repr(route)), route


def app_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) the app answers, HEAD folded into GET."""
    found: set[tuple[str, str]] = set()
    for path, route in _flatten(app.routes):
        if isinstance(route, Mount):
            found.add(("GET", path + "/{path}"))
        elif isinstance(route, Route):  # APIRoute is a Route
            methods = set(route.methods or ())
            if "GET" in methods:
                methods.discard("HEAD")
            found.update((m, path) for m in methods)
        else:  # a websocket or anything new: the matrix must learn about it
            found.add(("?", path))
    return found


@dataclass
class Call:
    method: str
    url: str
    json: Any = None
    headers: dict[str, str] | None = None


class World:
    """The objects the calls touch, one fresh target per caller where a call consumes it."""

    def __init__(self, container: Container, keys: Keys) -> None:
        self.container = container
        self.keys = keys
        self.counter = itertools.count()
        self.victims: dict[str, str] = {}
        self.head_size = 0
        self.webhook_event_id = ""
        self.intent_id = ""
        self.refund_id = ""
        self.per_caller: dict[str, dict[str, str]] = {}
        container.gateways["sandbox"] = FakeGateway()  # type: ignore[assignment]

    async def setup(self) -> None:
        accounts = [
            AccountInput("m:a", "USD", "test", AccountFlag(0), "{}"),
            AccountInput("m:b", "USD", "test", AccountFlag(0), "{}"),
            *(AccountInput(f"m:close:{c}", "USD", "test", AccountFlag(0), "{}") for c in EVERYONE),
        ]
        async with self.container.db.transaction() as uow:
            await ledger_service.create_accounts(uow, Context.system("tests"), accounts)
        async with self.container.db.transaction() as uow:
            await ledger_service.post(
                uow, [TransferInput("m:t0", "m:a", "m:b", 5, "USD", "test")], public=True
            )
        for caller in EVERYONE:
            self.victims[caller] = (await self.keys.create(Role.BIDDER))["key"].id
        async with self.container.db.transaction() as uow:
            event = await webhooks_service.enqueue(
                uow, "payment_intent.succeeded", {"id": "pi_matrix"}, ts_us=uow.clock.now_us()
            )
        self.webhook_event_id = event.id
        await self._payments()
        await self._orders()
        await self._auctions()
        # A signed tree head for the audit routes to answer about (reads only add to the outbox).
        self.head_size = await self.container.sequencer.run_once()
        assert self.head_size > 0

    async def _payments(self) -> None:
        """Per caller: an intent to confirm, one to capture, one to cancel, one to refund, and
        two reviews to decide; plus one intent and one refund anyone allowed may read."""
        payments = self.container.payments
        ctx = Context.system("tests")

        async def intent(amount: int = 5000, **kw: Any) -> Any:
            new = NewIntent(amount=amount, currency="USD", payment_method="tok_ok_matrix", **kw)
            return await payments.create(ctx, new, idempotency_key=None)

        manual = CaptureMethod.MANUAL
        self.intent_id = (await intent(confirm=True)).id
        self.refund_id = (
            await payments.refund(
                ctx,
                NewRefund(self.intent_id, 1, RefundReason.REQUESTED_BY_CUSTOMER),
                idempotency_key=None,
            )
        ).id
        for caller in EVERYONE:
            self.per_caller[caller] = {
                "confirm": (await intent()).id,
                "capture": (await intent(confirm=True, capture_method=manual)).id,
                "cancel": (await intent()).id,
                "refund": (await intent(confirm=True)).id,
                "approve": (await intent(1_200_000, confirm=True)).review_id or "",
                "reject": (await intent(1_200_000, confirm=True)).review_id or "",
            }

    async def _orders(self) -> None:
        """Per caller: an order in the state each order route acts on, with the caller's own
        principal as its buyer (bidder routes) or seller (ship), as the routes' owner checks
        need; a defaulted one offers the caller a second chance."""
        escrow = self.container.escrow
        ctx = Context.system("tests")

        async def order(caller: str, kind: str, steps: int, window_s: int = 3_600) -> str:
            buyer = "matrix:bidder" if caller == "seller" else f"matrix:{caller}"
            runner_up = None
            if kind == "second":
                buyer, runner_up = "matrix:defaulter", f"matrix:{caller}"
                if caller == "seller":
                    runner_up = "matrix:nobody"
            terms = OrderTerms(
                lot_id=f"lot_m_{kind}_{caller}",
                seller_id="matrix:seller",
                buyer_id=buyer,
                currency="USD",
                hammer_price=4_000,
                buyer_premium_bps=2_500,
                seller_commission_bps=1_000,
                payment_window_s=window_s,
                inspection_period_s=3_600,
                runner_up_bidder_id=runner_up,
                runner_up_amount=3_000 if runner_up else None,
            )
            async with self.container.db.transaction() as uow:
                if kind == "second":  # opened 10 s ago: its 1 s payment window is over
                    past = FixedClock(uow.clock.now_us() - 10_000_000)
                    # the same transaction (its commit hooks included), another clock
                    uow = dataclasses.replace(uow, clock=past)  # noqa: PLW2901
                order_id = await open_order(uow, ctx, terms)
            if steps >= 1:
                await escrow.pay(ctx, order_id, payment_method=f"tok_ok_m_{kind}_{caller}")
            if steps >= 2:
                await escrow.ship(ctx, order_id, carrier="dhl", tracking="1234567890")
            if steps >= 3:
                await escrow.confirm_delivery(ctx, order_id)
            if steps >= 4:
                await escrow.dispute(ctx, order_id, reason="matrix")
            if kind in ("released", "payout_failed"):
                gateway = self.container.gateways["sandbox"]
                assert isinstance(gateway, FakeGateway)
                refused = kind == "payout_failed"
                gateway.refuse_payouts = refused
                destinations = escrow.payout_destination
                if refused:  # "matrix:seller" is no party: pay its own id out (and be refused)
                    escrow.payout_destination = None
                try:
                    await escrow.accept(ctx, order_id)
                finally:
                    gateway.refuse_payouts = False
                    escrow.payout_destination = destinations
            return order_id

        seconds = {caller: await order(caller, "second", 0, 1) for caller in EVERYONE}
        for order_id in seconds.values():
            await escrow.default(ctx, order_id)
        for caller in EVERYONE:
            self.per_caller[caller].update(
                {
                    "order": await order(caller, "get", 0),
                    "pay": await order(caller, "pay", 0),
                    "ship": await order(caller, "ship", 1),
                    "confirm_delivery": await order(caller, "confirm", 2),
                    "accept": await order(caller, "accept", 3),
                    "dispute": await order(caller, "dispute", 3),
                    "resolve": await order(caller, "resolve", 4),
                    "refund_after": await order(caller, "released", 3),
                    "order_cancel": await order(caller, "cancel", 1),
                    "payout_failed": await order(caller, "payout_failed", 3),
                    "second": seconds[caller],
                }
            )

    async def _auctions(self) -> None:
        """A seller and a bidder (with a card) whose own keys the seller and bidder callers use,
        and per caller a lot in the state each lot route acts on."""
        ctx = Context.system("tests")
        pepper = self.container.pepper
        async with self.container.db.transaction() as uow:
            seller, s_key = await parties_service.register(
                uow, ctx, kind=PartyKind.SELLER, name="m seller", email=None, pepper=pepper
            )
            bidder, b_key = await parties_service.register(
                uow, ctx, kind=PartyKind.BIDDER, name="m bidder", email=None, pepper=pepper
            )
            await parties_service.add_card(
                uow, ctx, bidder.id, payment_method="tok_ok_m_card", brand=None, last4=None
            )
        self.seller_id, self.bidder_id = seller.id, bidder.id
        self.party_headers = {
            "seller": {"Authorization": f"Bearer {s_key.plaintext}"},
            "bidder": {"Authorization": f"Bearer {b_key.plaintext}"},
        }
        auctions = self.container.auctions
        now = self.container.clock.now_us()

        async def lot(*, open_: bool = True, **terms: Any) -> str:
            new = NewLot(
                seller_id=seller.id,
                title="matrix lot",
                currency="USD",
                estimate=terms.pop("estimate", 10_000),
                starting_price=1_000,
                starts_at_us=now,
                ends_at_us=now + 86_400_000_000,
                **terms,
            )
            created = await auctions.create_lot(ctx, new)
            if open_:
                await auctions.open_lot(ctx, created.id)
            return created.id

        self.lot_id = await lot()
        for caller in EVERYONE:
            retract_lot = await lot()
            bid, _ = await auctions.place_bid(
                ctx, retract_lot, bidder_id=bidder.id, max_amount=2_000, idempotency_key=None
            )
            self.per_caller.setdefault(caller, {}).update(
                {
                    "lot_open": await lot(open_=False),
                    "lot_bid": await lot(),
                    "lot_retract": retract_lot,
                    "bid_retract": bid.id,
                    "lot_buy_now": await lot(buy_now_price=9_000),
                    "lot_close": await lot(),
                    "lot_deposit": await lot(estimate=2_000_000),
                }
            )

    def _as_party(self, caller: str, idem: dict[str, str] | None = None) -> dict[str, str]:
        """The party's own key for the bidder and seller callers (ownership needs a real
        party); every other caller keeps its own key."""
        return {**self.party_headers.get(caller, {}), **(idem or {})}

    def _lot_calls(self, caller: str, n: int, idem: dict[str, str]) -> dict[Any, Any]:
        mine = self.per_caller.get(caller, {})
        bidder_id = getattr(self, "bidder_id", "")  # set by setup(); public calls need none
        on_behalf = {} if caller == "bidder" else {"bidder_id": bidder_id}
        return {
            ("POST", "/v1/bidders"): lambda: Call("POST", "/v1/bidders", {"name": f"b {n}"}),
            ("POST", "/v1/sellers"): lambda: Call("POST", "/v1/sellers", {"name": f"s {n}"}),
            ("PUT", "/v1/sellers/{seller_id}/payout_destination"): lambda: Call(
                "PUT",
                f"/v1/sellers/{getattr(self, 'seller_id', '')}/payout_destination",
                {"gateway_account": f"acct_m_{n}"},
                self._as_party(caller),
            ),
            ("POST", "/v1/bidders/{bidder_id}/cards"): lambda: Call(
                "POST",
                f"/v1/bidders/{bidder_id}/cards",
                {"payment_method": f"tok_ok_m_{n}"},
                self._as_party(caller),
            ),
            ("POST", "/v1/lots"): lambda: Call(
                "POST",
                "/v1/lots",
                {
                    "seller_id": self.seller_id,
                    "title": "m",
                    "currency": "USD",
                    "estimate": 100,
                    "starting_price": 100,
                    "ends_at": "2027-01-01T00:00:00Z",
                },
                self._as_party(caller),
            ),
            ("POST", "/v1/lots/{lot_id}/open"): lambda: Call(
                "POST", f"/v1/lots/{mine.get('lot_open')}/open", None, self._as_party(caller)
            ),
            ("GET", "/v1/lots/{lot_id}"): lambda: Call(
                "GET", f"/v1/lots/{self.lot_id}", None, self._as_party(caller)
            ),
            ("POST", "/v1/lots/{lot_id}/bids"): lambda: Call(
                "POST",
                f"/v1/lots/{mine.get('lot_bid')}/bids",
                {"max_amount": 5_000, **on_behalf},
                self._as_party(caller, idem),
            ),
            ("GET", "/v1/lots/{lot_id}/bids"): lambda: Call(
                "GET", f"/v1/lots/{self.lot_id}/bids", None, self._as_party(caller)
            ),
            ("POST", "/v1/lots/{lot_id}/bids/{bid_id}/retract"): lambda: Call(
                "POST",
                f"/v1/lots/{mine.get('lot_retract')}/bids/{mine.get('bid_retract')}/retract",
                {"reason": "shill bidding"},
                idem,
            ),
            ("POST", "/v1/lots/{lot_id}/buy_now"): lambda: Call(
                "POST",
                f"/v1/lots/{mine.get('lot_buy_now')}/buy_now",
                on_behalf,
                self._as_party(caller, idem),
            ),
            ("POST", "/v1/lots/{lot_id}/close"): lambda: Call(
                "POST", f"/v1/lots/{mine.get('lot_close')}/close", None, idem
            ),
            ("POST", "/v1/lots/{lot_id}/deposits"): lambda: Call(
                "POST",
                f"/v1/lots/{mine.get('lot_deposit')}/deposits",
                on_behalf,
                self._as_party(caller, idem),
            ),
        }

    def call(self, method: str, path: str, caller: str) -> Call:
        n = next(self.counter)
        mine = self.per_caller.get(caller, {})
        idem = {"Idempotency-Key": f"matrix-{n}"}
        calls: dict[tuple[str, str], Callable[[], Call]] = {
            ("GET", "/healthz"): lambda: Call("GET", "/healthz"),
            ("GET", "/readyz"): lambda: Call("GET", "/readyz"),
            ("GET", "/openapi.json"): lambda: Call("GET", "/openapi.json"),
            ("GET", "/docs"): lambda: Call("GET", "/docs"),
            ("GET", "/docs/assets/{path}"): lambda: Call("GET", "/docs/assets/swagger-ui.css"),
            ("GET", "/v1/keys"): lambda: Call("GET", "/v1/keys"),
            ("POST", "/v1/keys"): lambda: Call(
                "POST", "/v1/keys", {"role": "bidder", "name": f"by {caller}"}
            ),
            ("POST", "/v1/keys/{key_id}/revoke"): lambda: Call(
                "POST", f"/v1/keys/{self.victims[caller]}/revoke"
            ),
            ("POST", "/v1/ledger/accounts"): lambda: Call(
                "POST",
                "/v1/ledger/accounts",
                {"accounts": [{"id": f"m:new:{n}", "currency": "USD", "code": "test"}]},
            ),
            ("GET", "/v1/ledger/accounts/{account_id}"): lambda: Call(
                "GET", "/v1/ledger/accounts/m:a"
            ),
            ("POST", "/v1/ledger/accounts/{account_id}/close"): lambda: Call(
                "POST", f"/v1/ledger/accounts/m:close:{caller}/close"
            ),
            ("GET", "/v1/ledger/accounts/{account_id}/transfers"): lambda: Call(
                "GET", "/v1/ledger/accounts/m:a/transfers"
            ),
            ("POST", "/v1/ledger/transfers"): lambda: Call(
                "POST",
                "/v1/ledger/transfers",
                {
                    "transfers": [
                        {
                            "id": f"m:t:{n}",
                            "debit_account_id": "m:a",
                            "credit_account_id": "m:b",
                            "amount": 1,
                            "currency": "USD",
                            "code": "test",
                        }
                    ]
                },
                {"Idempotency-Key": f"matrix-{n}"},
            ),
            ("GET", "/v1/ledger/transfers/{transfer_id}"): lambda: Call(
                "GET", "/v1/ledger/transfers/m:t0"
            ),
            ("GET", "/v1/audit/events"): lambda: Call("GET", "/v1/audit/events?limit=5"),
            ("GET", "/v1/audit/tree_head"): lambda: Call("GET", "/v1/audit/tree_head"),
            ("GET", "/v1/audit/tree_heads"): lambda: Call("GET", "/v1/audit/tree_heads"),
            ("GET", "/v1/audit/proof/inclusion"): lambda: Call(
                "GET", f"/v1/audit/proof/inclusion?seq=0&tree_size={self.head_size}"
            ),
            ("GET", "/v1/audit/proof/consistency"): lambda: Call(
                "GET",
                f"/v1/audit/proof/consistency?first={self.head_size}&second={self.head_size}",
            ),
            ("GET", "/v1/audit/public_keys"): lambda: Call("GET", "/v1/audit/public_keys"),
            ("GET", "/v1/webhook_events"): lambda: Call("GET", "/v1/webhook_events"),
            ("GET", "/v1/webhook_events/{event_id}"): lambda: Call(
                "GET", f"/v1/webhook_events/{self.webhook_event_id}"
            ),
            ("POST", "/v1/payment_intents"): lambda: Call(
                "POST",
                "/v1/payment_intents",
                {"amount": 100, "currency": "USD", "payment_method": "tok_ok", "confirm": True},
                idem,
            ),
            ("GET", "/v1/payment_intents/{intent_id}"): lambda: Call(
                "GET", f"/v1/payment_intents/{self.intent_id}"
            ),
            ("POST", "/v1/payment_intents/{intent_id}/confirm"): lambda: Call(
                "POST", f"/v1/payment_intents/{mine['confirm']}/confirm", {}, idem
            ),
            ("POST", "/v1/payment_intents/{intent_id}/capture"): lambda: Call(
                "POST", f"/v1/payment_intents/{mine['capture']}/capture", {}, idem
            ),
            ("POST", "/v1/payment_intents/{intent_id}/cancel"): lambda: Call(
                "POST", f"/v1/payment_intents/{mine['cancel']}/cancel", {}, idem
            ),
            ("POST", "/v1/refunds"): lambda: Call(
                "POST",
                "/v1/refunds",
                {"payment_intent": mine["refund"], "reason": "requested_by_customer"},
                idem,
            ),
            ("GET", "/v1/refunds/{refund_id}"): lambda: Call(
                "GET", f"/v1/refunds/{self.refund_id}"
            ),
            ("GET", "/v1/reviews"): lambda: Call("GET", "/v1/reviews?status=open"),
            ("GET", "/v1/reviews/{review_id}"): lambda: Call(
                "GET", f"/v1/reviews/{mine['approve']}"
            ),
            ("POST", "/v1/reviews/{review_id}/approve"): lambda: Call(
                "POST", f"/v1/reviews/{mine['approve']}/approve", {}, idem
            ),
            ("POST", "/v1/reviews/{review_id}/reject"): lambda: Call(
                "POST", f"/v1/reviews/{mine['reject']}/reject", {}, idem
            ),
            ("GET", "/v1/orders/{order_id}"): lambda: Call("GET", f"/v1/orders/{mine['order']}"),
            ("POST", "/v1/orders/{order_id}/pay"): lambda: Call(
                "POST", f"/v1/orders/{mine['pay']}/pay", {"payment_method": "tok_ok_m"}, idem
            ),
            ("POST", "/v1/orders/{order_id}/ship"): lambda: Call(
                "POST",
                f"/v1/orders/{mine['ship']}/ship",
                {"carrier": "ups", "tracking_number": "1Z999AA10123456784"},
                idem,
            ),
            ("POST", "/v1/orders/{order_id}/confirm_delivery"): lambda: Call(
                "POST", f"/v1/orders/{mine['confirm_delivery']}/confirm_delivery", {}, idem
            ),
            ("POST", "/v1/orders/{order_id}/accept"): lambda: Call(
                "POST", f"/v1/orders/{mine['accept']}/accept", {}, idem
            ),
            ("POST", "/v1/orders/{order_id}/dispute"): lambda: Call(
                "POST", f"/v1/orders/{mine['dispute']}/dispute", {"reason": "broken"}, idem
            ),
            ("POST", "/v1/orders/{order_id}/resolve"): lambda: Call(
                "POST", f"/v1/orders/{mine['resolve']}/resolve", {"refund_amount": 1_000}, idem
            ),
            ("POST", "/v1/orders/{order_id}/refund"): lambda: Call(
                "POST",
                f"/v1/orders/{mine['refund_after']}/refund",
                {"amount": 1_000, "reason": "matrix"},
                idem,
            ),
            ("POST", "/v1/orders/{order_id}/cancel"): lambda: Call(
                "POST", f"/v1/orders/{mine['order_cancel']}/cancel", {"reason": "matrix"}, idem
            ),
            ("POST", "/v1/orders/{order_id}/payout"): lambda: Call(
                "POST",
                f"/v1/orders/{mine['payout_failed']}/payout",
                {"action": "retry", "reason": "matrix"},
                idem,
            ),
            ("POST", "/v1/orders/{order_id}/second_chance/accept"): lambda: Call(
                "POST", f"/v1/orders/{mine['second']}/second_chance/accept", {}, idem
            ),
            ("POST", "/v1/webhooks/{gateway}"): lambda: Call(
                "POST", "/v1/webhooks/sandbox", {"id": "evt_1", "type": "charge.captured"}
            ),
            ("GET", "/v1/sandbox/charges"): lambda: Call("GET", "/v1/sandbox/charges"),
        }
        calls.update(self._lot_calls(caller, n, idem))
        return calls[(method, path)]()


async def _send(client: httpx.AsyncClient, call: Call, auth: dict[str, str]) -> httpx.Response:
    headers = {**auth, **(call.headers or {})}
    return await client.request(call.method, call.url, json=call.json, headers=headers)


def _check(
    r: httpx.Response, allowed: bool, ok_status: int, public: bool, unauthenticated: bool
) -> str | None:
    """Why ``r`` is wrong, or None."""
    if allowed:
        if r.status_code == ok_status:
            return None
        return f"expected {ok_status}, got {r.status_code} {r.text[:200]}"
    expected, code = (401, "unauthenticated") if unauthenticated else (403, "forbidden")
    assert not public
    if r.status_code != expected:
        return f"expected {expected}, got {r.status_code} {r.text[:200]}"
    if r.headers.get("content-type") != PROBLEM or r.json().get("code") != code:
        return f"expected a {code} problem, got {r.text[:200]}"
    return None


async def test_the_matrix_lists_every_route_and_every_role(client: httpx.AsyncClient) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    routes = app_routes(app)
    assert routes - MATRIX.keys() == set(), "routes missing from the hand-written matrix"
    assert MATRIX.keys() - routes == set(), "matrix rows for routes that no longer exist"
    assert {r.value for r in Role} == set(ROLES)


async def test_every_route_for_every_role(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    world = World(container, keys)
    await world.setup()
    callers: dict[str, dict[str, str]] = {"anonymous": {}}
    for role in ROLES:
        callers[role] = (await keys.create(Role(role), f"matrix:{role}"))["headers"]
    wrong: list[str] = []
    for (method, path), (allowed_roles, ok_status) in sorted(MATRIX.items()):
        public = allowed_roles == EVERYONE
        for caller, auth in callers.items():
            call = world.call(method, path, caller)
            r = await _send(client, call, auth)
            problem = _check(
                r, caller in allowed_roles, ok_status, public, unauthenticated=caller == "anonymous"
            )
            if problem:
                wrong.append(f"{caller:>9} {method} {call.url}: {problem}")
    assert wrong == [], "\n".join(wrong)
    # A refused call changed nothing: only the allowed callers' accounts are closed, only their
    # victims' keys revoked, only their transfers written.
    admin = callers["admin"]
    for caller in EVERYONE:
        flags = (await client.get(f"/v1/ledger/accounts/m:close:{caller}", headers=admin)).json()[
            "flags"
        ]
        assert ("closed" in flags) == (caller in ACCOUNT_CLOSERS), caller
    listed = {
        k["id"]: k for k in (await client.get("/v1/keys?limit=1000", headers=admin)).json()["data"]
    }
    for caller, key_id in world.victims.items():
        assert (listed[key_id]["revoked_at"] is not None) == (caller in ADMIN), caller
    names = [k["name"] for k in listed.values() if k["name"].startswith("by ")]
    assert names == ["by admin"]
    statement = (
        await client.get("/v1/ledger/accounts/m:a/transfers?limit=1000", headers=admin)
    ).json()["data"]
    assert len(statement) == 1 + len(LEDGER_WRITERS)


BAD_CREDENTIALS = {
    "no header": {},
    "empty bearer": {"Authorization": "Bearer "},
    "wrong scheme": {"Authorization": "Token hl_aaaaaaaaaaaaaaaa_x"},
    "garbage": {"Authorization": "Bearer hello"},
    "unknown id": {"Authorization": "Bearer hl_zzzzzzzzzzzzzzzz_secret"},
}


async def _bad_keys(client: httpx.AsyncClient, keys: Keys, clock: Any) -> dict[str, dict[str, str]]:
    admin = await keys.headers(Role.ADMIN)
    found = dict(BAD_CREDENTIALS)
    revoked = await keys.create(Role.ADMIN)
    r = await client.post(f"/v1/keys/{revoked['key'].id}/revoke", headers=admin)
    assert r.status_code == 200
    found["revoked admin"] = revoked["headers"]
    r = await client.post(
        "/v1/keys",
        headers=admin,
        json={"role": "admin", "name": "expiring", "expires_at": "2026-01-01T00:00:01Z"},
    )
    assert r.status_code == 201, r.text
    found["expired admin"] = {"Authorization": f"Bearer {r.json()['secret']}"}
    forged = (await keys.create(Role.ADMIN))["plaintext"]
    found["wrong secret"] = {
        "Authorization": f"Bearer {forged[:-1]}{'A' if forged[-1] != 'A' else 'B'}"
    }
    clock.advance(2)
    return found


async def test_revoked_expired_and_bad_keys_get_401_on_every_protected_route(
    client: httpx.AsyncClient, keys: Keys, container: Container, clock: Any
) -> None:
    world = World(container, keys)
    await world.setup()
    bad = await _bad_keys(client, keys, clock)
    wrong: list[str] = []
    for (method, path), (allowed_roles, _) in sorted(MATRIX.items()):
        if allowed_roles == EVERYONE:
            continue
        for label, auth in bad.items():
            call = world.call(method, path, "anonymous")
            r = await _send(client, call, auth)
            problem = _check(r, False, 0, False, unauthenticated=True)
            if problem:
                wrong.append(f"{label} {method} {call.url}: {problem}")
    assert wrong == [], "\n".join(wrong)


async def test_public_routes_ignore_a_bad_key(
    client: httpx.AsyncClient, keys: Keys, container: Container, clock: Any
) -> None:
    world = World(container, keys)
    bad = await _bad_keys(client, keys, clock)
    for (method, path), (allowed_roles, ok_status) in sorted(MATRIX.items()):
        if allowed_roles != EVERYONE:
            continue
        for label, auth in bad.items():
            r = await _send(client, world.call(method, path, "anonymous"), auth)
            assert r.status_code == ok_status, (label, path, r.text[:200])


async def test_only_admins_manage_keys_even_their_own(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """Ownership as it exists today: a key's own principal cannot revoke or list it; only an
    admin manages keys. (Bidder/seller-owned objects arrive with later routes.)"""
    admin = await keys.headers(Role.ADMIN)
    for role in ROLES[1:]:
        own = await keys.create(Role(role), f"owner:{role}")
        r = await client.post(f"/v1/keys/{own['key'].id}/revoke", headers=own["headers"])
        assert r.status_code == 403, (role, r.text)
        assert r.json()["code"] == "forbidden"
        r = await client.post(
            "/v1/keys",
            headers=own["headers"],
            json={"role": role, "name": "sibling", "principal_id": f"owner:{role}"},
        )
        assert r.status_code == 403, (role, r.text)
        # Still usable: the refused revoke did not take effect.
        r = await client.post(f"/v1/keys/{own['key'].id}/revoke", headers=own["headers"])
        assert r.status_code == 403
    revoked = await client.get("/v1/keys?limit=1000", headers=admin)
    assert all(k["revoked_at"] is None for k in revoked.json()["data"])


async def test_no_other_role_can_mint_an_admin_key(client: httpx.AsyncClient, keys: Keys) -> None:
    admin = await keys.headers(Role.ADMIN)
    for role in ROLES[1:]:
        headers = await keys.headers(Role(role))
        body = {"role": "admin", "name": f"escalation by {role}"}
        r = await client.post("/v1/keys", headers=headers, json=body)
        assert r.status_code == 403, (role, r.text)
    listed = (await client.get("/v1/keys?limit=1000", headers=admin)).json()["data"]
    assert [k for k in listed if k["name"].startswith("escalation")] == []
