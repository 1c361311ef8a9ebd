"""The Stripe adapter: PaymentIntents through the official ``stripe`` SDK (async, httpx).

Mapping of the :class:`~hammerlock.payments.gateways.base.Gateway` protocol:

* ``authorize`` = ``POST /v1/payment_intents`` with ``confirm=true`` and ``capture_method``
  ``manual`` (authorize) or ``automatic`` (sale). Our ``gateway_key`` is Stripe's
  ``Idempotency-Key``: a retry with the same key is answered with the first response (Stripe
  stores it for at least 24 h, errors included), so no retry makes a second charge. The key is
  also written into the intent's ``metadata[hammerlock_gateway_key]``.
* ``retrieve_by_idempotency_key``: Stripe cannot look up a request by idempotency key, and
  re-POSTing the create is no lookup (it needs the original parameters and *charges* when the
  first attempt never arrived). So the adapter finds the intent by its metadata: first the
  Search API (``metadata['hammerlock_gateway_key']:'…'``), which is eventually consistent
  (usually < 1 min, up to an hour in outages); when it finds nothing, a strongly consistent
  ``GET /v1/payment_intents?created[gte]=now-lookback`` scan of recent intents, filtered on the
  metadata. ``None`` is only returned when both agree. Even a stale ``None`` is safe: the caller
  re-sends with the *same* key, and Stripe replays the original instead of charging again.
* ``capture`` = ``/capture`` with ``amount_to_capture``; ``void`` = ``/cancel``; each with its
  own derived idempotency key, and each returns the current charge when it was already done.
* ``refund`` = ``POST /v1/refunds`` with the refund's own key, after a look for it (``GET
  /v1/refunds?payment_intent=…``, filtered on ``metadata[hammerlock_refund_key]``): a replay
  would answer the first state, and a key Stripe forgot would refund twice. ``payout`` =
  ``POST /v1/transfers`` to a connected account (``acct_…``) with the payout's key.
* 3-D Secure: ``requires_action`` with ``next_action.redirect_to_url.url`` becomes
  :attr:`ChargeStatus.REQUIRES_ACTION` with ``next_action_url``.
* Webhooks: ``Stripe-Signature: t=…,v1=…`` verified over the raw body (HMAC-SHA-256 over
  ``t.payload``, 300 s tolerance, constant-time) with :mod:`.signature`.

Errors: a card decline (402 ``CardError``) is a :class:`Charge` with status ``DECLINED``; an
``httpx`` read timeout or our overall deadline is :class:`GatewayTimeout`; connection failures,
429, 409 (a concurrent request holds the key) and 5xx are :class:`GatewayUnavailable`; other
4xx are :class:`GatewayRejected`. Stripe has no gateway-side escrow: ``hold_in_escrow`` and
``release_from_escrow`` are refused (hammerlock holds escrow on its own ledger and pays sellers
with transfers).
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import httpx
import orjson
import stripe
from pydantic import SecretStr

from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    CardData,
    CardSummary,
    Charge,
    ChargeStatus,
    DeclineCode,
    GatewayError,
    GatewayRejected,
    GatewayTimeout,
    GatewayToken,
    GatewayUnavailable,
    Payout,
    PayoutRequest,
    Refund,
    WebhookEvent,
)
from hammerlock.payments.gateways.signature import DEFAULT_TOLERANCE_S, verify_header

if TYPE_CHECKING:
    from hammerlock.settings import Settings

__all__ = ["METADATA_KEY", "StripeGateway"]

METADATA_KEY: Final = "hammerlock_gateway_key"
REFUND_METADATA_KEY: Final = "hammerlock_refund_key"
PAYOUT_METADATA_KEY: Final = "hammerlock_payout_key"
SIGNATURE_HEADER: Final = "stripe-signature"
KEY_RE: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
"""Keys we send: they go into a search query and a header, so only these characters."""
CACHE_MAX: Final = 10_000
LIST_PAGE_SIZE: Final = 100
LIST_PAGES_MAX: Final = 10
WEBHOOK_BODY_MAX: Final = 1024 * 1024
_EXPAND: Final = ["latest_charge"]
_DEADLINE_MARGIN_S: Final = 2.0

_T = TypeVar("_T")

_STATUS: Final = {
    "requires_capture": ChargeStatus.AUTHORIZED,
    "succeeded": ChargeStatus.CAPTURED,
    "canceled": ChargeStatus.VOIDED,
    "requires_action": ChargeStatus.REQUIRES_ACTION,
    "requires_payment_method": ChargeStatus.DECLINED,
}
_PASSTHROUGH_CODES: Final = frozenset(
    {
        DeclineCode.EXPIRED_CARD,
        DeclineCode.INCORRECT_CVC,
        DeclineCode.PROCESSING_ERROR,
        DeclineCode.AUTHENTICATION_REQUIRED,
    }
)


def _secret(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _check_key(key: str, what: str) -> str:
    if KEY_RE.fullmatch(key) is None:
        msg = f"{what} must be 1-200 characters of [A-Za-z0-9_.:-]"
        raise GatewayRejected(msg, code="invalid_key")
    return key


def decline_codes(error: Mapping[str, Any]) -> tuple[str, str | None]:
    """Stripe's ``last_payment_error`` / 402 error → (``DeclineCode`` value, issuer reason)."""
    code = error.get("code")
    decline_code = error.get("decline_code")
    if code == "payment_intent_authentication_failure":
        return DeclineCode.AUTHENTICATION_REQUIRED, decline_code
    if decline_code == "insufficient_funds":
        return DeclineCode.INSUFFICIENT_FUNDS, decline_code
    if code in _PASSTHROUGH_CODES:
        return str(code), decline_code
    if decline_code in _PASSTHROUGH_CODES:
        return str(decline_code), decline_code
    return DeclineCode.CARD_DECLINED, decline_code


def _card_summary(latest_charge: Any) -> CardSummary | None:
    if not isinstance(latest_charge, Mapping):
        return None
    details = latest_charge.get("payment_method_details") or {}
    card = details.get("card") if isinstance(details, Mapping) else None
    if not isinstance(card, Mapping):
        return None
    return CardSummary(
        brand=card.get("brand"),
        last4=card.get("last4"),
        country=card.get("country"),
        fingerprint=card.get("fingerprint"),
    )


def charge_from_intent(intent: Mapping[str, Any], gateway_key: str) -> Charge:
    """A PaymentIntent (as JSON or a ``StripeObject``) → :class:`Charge`."""
    status = intent.get("status")
    if status == "processing":
        msg = "the payment is still processing at Stripe"
        raise GatewayTimeout(msg)
    mapped = _STATUS.get(str(status))
    if mapped is None:
        msg = f"unexpected PaymentIntent status {status!r}"
        raise GatewayRejected(msg, code="unexpected_state")
    latest = intent.get("latest_charge")
    latest_map: Mapping[str, Any] = latest if isinstance(latest, Mapping) else {}
    error_code = decline_code = message = next_action_url = None
    if mapped is ChargeStatus.DECLINED:
        error = intent.get("last_payment_error") or {"code": DeclineCode.PROCESSING_ERROR}
        error_code, decline_code = decline_codes(error)
        message = error.get("message")
    if mapped is ChargeStatus.REQUIRES_ACTION:
        next_action = intent.get("next_action") or {}
        redirect = next_action.get("redirect_to_url") or {}
        next_action_url = redirect.get("url")
    captured = int(intent.get("amount_received") or 0) if mapped is ChargeStatus.CAPTURED else 0
    return Charge(
        gateway="stripe",
        gateway_key=gateway_key,
        charge_id=str(intent["id"]),
        status=mapped,
        amount=int(intent["amount"]),
        currency=str(intent["currency"]).upper(),
        amount_captured=int(latest_map.get("amount_captured") or captured),
        amount_refunded=int(latest_map.get("amount_refunded") or 0),
        error_code=error_code,
        decline_code=decline_code,
        message=message,
        next_action_url=next_action_url,
        card=_card_summary(latest),
    )


def _is_read_timeout(error: BaseException) -> bool:
    cause = error.__cause__
    not_sent = (httpx.ConnectTimeout, httpx.PoolTimeout)
    return isinstance(cause, httpx.TimeoutException) and not isinstance(cause, not_sent)


def map_error(error: stripe.StripeError) -> GatewayError:
    """Any SDK error except a card decline → our error tree (see module docstring)."""
    message = error.user_message or type(error).__name__
    if isinstance(error, stripe.APIConnectionError):
        if _is_read_timeout(error):
            return GatewayTimeout(f"no answer from Stripe in time: {message}")
        return GatewayUnavailable(f"Stripe unreachable: {message}")
    if isinstance(error, stripe.RateLimitError):
        return GatewayUnavailable(f"Stripe rate limit: {message}")
    if isinstance(error, stripe.IdempotencyError):
        return GatewayRejected(message, code="idempotency_key_reuse")
    status = error.http_status or 0
    if status == 409 or status >= 500:  # 409: another request holds the key, nothing saved
        return GatewayUnavailable(f"Stripe answered {status}: {message}")
    return GatewayRejected(message, code=str(error.code or "gateway_rejected"))


class StripeGateway:
    """The :class:`Gateway` protocol on Stripe. One instance per Stripe account."""

    name = "stripe"

    def __init__(
        self,
        api_key: SecretStr | str,
        *,
        webhook_secret: SecretStr | str,
        api_base: str | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        webhook_tolerance_s: int = DEFAULT_TOLERANCE_S,
        lookup_window_s: int = 3_600,
        now_s: Callable[[], float] = time.time,
        http_client: stripe.HTTPClient | None = None,
    ) -> None:
        if not 0 < timeout_s <= 300 or connect_timeout_s <= 0:
            msg = "need 0 < timeout_s <= 300 and connect_timeout_s > 0"
            raise ValueError(msg)
        self._timeout_s = timeout_s
        self._webhook_secret = _secret(webhook_secret)
        self._webhook_tolerance_s = webhook_tolerance_s
        self._lookup_window_s = lookup_window_s
        self._now_s = now_s
        self._http = http_client or stripe.HTTPXClient(
            timeout=httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s))
        )
        # The SDK types this as its private BaseAddresses TypedDict.
        base: Any = {"api": api_base.rstrip("/")} if api_base else None
        # Retries belong to ResilientGateway (bounded, jittered, breaker-aware), not the SDK.
        self._client = stripe.StripeClient(
            _secret(api_key), base_addresses=base, http_client=self._http, max_network_retries=0
        )
        self._intent_ids: OrderedDict[str, str] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> StripeGateway:
        """The gateway ``HAMMERLOCK_STRIPE_*`` describe; ``ValueError`` when unconfigured."""
        if settings.stripe_api_key is None or settings.stripe_webhook_secret is None:
            msg = "the stripe gateway needs HAMMERLOCK_STRIPE_API_KEY and _WEBHOOK_SECRET"
            raise ValueError(msg)
        options: dict[str, Any] = {
            "webhook_secret": settings.stripe_webhook_secret,
            "api_base": settings.stripe_api_base,
            "timeout_s": settings.stripe_timeout_s,
            **overrides,
        }
        return cls(settings.stripe_api_key, **options)

    def __repr__(self) -> str:
        return f"StripeGateway(timeout_s={self._timeout_s})"  # never the keys

    async def aclose(self) -> None:
        """Close the HTTP connection pool (the composition root calls it on shutdown)."""
        await self._http.close_async()  # type: ignore[no-untyped-call]  # untyped in the SDK

    # --- plumbing -------------------------------------------------------------------------

    async def _send(self, call: Callable[[], Awaitable[_T]], *, declines: bool = False) -> _T:
        """One SDK call under an overall deadline, SDK errors mapped. With ``declines``, a
        ``CardError`` is left for the caller to turn into a declined :class:`Charge`."""
        try:
            # httpx bounds each phase (connect, write, read); this bounds the whole call.
            async with asyncio.timeout(self._timeout_s + _DEADLINE_MARGIN_S):
                return await call()
        except TimeoutError as error:
            msg = f"no answer from Stripe within {self._timeout_s} s"
            raise GatewayTimeout(msg) from error
        except stripe.CardError as error:
            if declines:
                raise
            message = error.user_message or "Stripe refused the card"
            raise GatewayRejected(message, code=str(error.code or "card_error")) from error
        except stripe.StripeError as error:
            raise map_error(error) from error

    def _remember(self, gateway_key: str, intent_id: str) -> None:
        self._intent_ids[gateway_key] = intent_id
        self._intent_ids.move_to_end(gateway_key)
        while len(self._intent_ids) > CACHE_MAX:
            self._intent_ids.popitem(last=False)

    async def _intent(self, gateway_key: str) -> Mapping[str, Any] | None:
        _check_key(gateway_key, "gateway_key")
        intents = self._client.v1.payment_intents
        known = self._intent_ids.get(gateway_key)
        if known is not None:
            found_by_id = await self._send(
                lambda: intents.retrieve_async(known, params={"expand": _EXPAND})
            )
            return found_by_id.to_dict()
        query = f"metadata['{METADATA_KEY}']:'{gateway_key}'"
        found = await self._send(
            lambda: intents.search_async(params={"query": query, "expand": ["data.latest_charge"]})
        )
        hit = next(iter(found.data), None)
        intent = hit.to_dict() if hit is not None else await self._scan_recent(gateway_key)
        if intent is not None:
            self._remember(gateway_key, intent["id"])
        return intent

    async def _scan_recent(self, gateway_key: str) -> Mapping[str, Any] | None:
        """Strongly consistent fallback for the Search API's indexing lag (bounded)."""
        intents = self._client.v1.payment_intents
        params: dict[str, Any] = {
            "created": {"gte": int(self._now_s()) - self._lookup_window_s},
            "limit": LIST_PAGE_SIZE,
            "expand": ["data.latest_charge"],
        }
        for _ in range(LIST_PAGES_MAX):
            page = await self._send(lambda: intents.list_async(params=cast("Any", dict(params))))
            for listed in page.data:
                intent = listed.to_dict()
                if (intent.get("metadata") or {}).get(METADATA_KEY) == gateway_key:
                    return intent
            if not page.has_more or not page.data:
                return None
            params["starting_after"] = page.data[-1]["id"]
        msg = "too many recent PaymentIntents to prove the key unused; try again shortly"
        raise GatewayUnavailable(msg)

    async def _require(self, gateway_key: str) -> Mapping[str, Any]:
        intent = await self._intent(gateway_key)
        if intent is None:
            msg = "no Stripe PaymentIntent was made under this gateway key"
            raise GatewayRejected(msg, code="charge_not_found")
        return intent

    # --- the protocol ---------------------------------------------------------------------

    def _create_params(self, request: AuthorizeRequest) -> dict[str, Any]:
        if request.hold_in_escrow:
            msg = "Stripe has no gateway-side escrow; hammerlock holds escrow on its ledger"
            raise GatewayRejected(msg, code="escrow_unsupported")
        params: dict[str, Any] = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            "capture_method": "automatic" if request.capture else "manual",
            "confirm": True,
            "payment_method_types": ["card"],
            "metadata": {**request.metadata, METADATA_KEY: request.gateway_key},
            "payment_method_options": {
                "card": {
                    "request_three_d_secure": (
                        "challenge" if request.force_three_d_secure else "automatic"
                    )
                }
            },
            "expand": _EXPAND,
        }
        if request.description is not None:
            params["description"] = request.description
        if request.return_url is not None:
            params["return_url"] = request.return_url
        params.update(self._source_params(request))
        return params

    @staticmethod
    def _source_params(request: AuthorizeRequest) -> dict[str, Any]:
        source = request.source
        if isinstance(source, GatewayToken):
            if not source.value.startswith("pm_"):
                msg = "a Stripe token must be a PaymentMethod id (pm_…)"
                raise GatewayRejected(msg, code="invalid_source")
            return {"payment_method": source.value}
        if isinstance(source, CardData):
            card: dict[str, Any] = {
                "number": source.number,
                "exp_month": source.exp_month,
                "exp_year": source.exp_year,
            }
            if source.cvc is not None:
                card["cvc"] = source.cvc
            data: dict[str, Any] = {"type": "card", "card": card}
            if source.name is not None:
                data["billing_details"] = {"name": source.name}
            return {"payment_method_data": data}
        msg = "vault tokens are detokenized inside the vault, which forwards CardData"
        raise GatewayRejected(msg, code="invalid_source")

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        key = _check_key(request.gateway_key, "gateway_key")
        params = self._create_params(request)
        intents = self._client.v1.payment_intents
        try:
            # One request per key at a time from this process: Stripe answers a concurrent
            # second one 409 (key in use), which would only be retried.
            async with self._key_lock(key):
                intent = await self._send(
                    lambda: intents.create_async(
                        params=cast("Any", params), options={"idempotency_key": key}
                    ),
                    declines=True,
                )
        except stripe.CardError as error:
            return self._declined(error, request)
        self._remember(key, intent.id)
        return charge_from_intent(intent.to_dict(), key)

    def _key_lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _declined(self, error: stripe.CardError, request: AuthorizeRequest) -> Charge:
        json_body = error.json_body if isinstance(error.json_body, dict) else {}
        body = json_body.get("error") or {}
        intent = body.get("payment_intent")
        if isinstance(intent, Mapping) and intent.get("id"):
            self._remember(request.gateway_key, str(intent["id"]))
            if intent.get("status") == "requires_payment_method":
                return charge_from_intent(intent, request.gateway_key)
        error_code, decline_code = decline_codes(body)
        return Charge(
            gateway=self.name,
            gateway_key=request.gateway_key,
            charge_id=str(intent["id"]) if isinstance(intent, Mapping) else "",
            status=ChargeStatus.DECLINED,
            amount=request.amount,
            currency=request.currency.upper(),
            error_code=error_code,
            decline_code=decline_code,
            message=body.get("message"),
        )

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        intent = await self._require(gateway_key)
        if intent["status"] == "succeeded":
            return charge_from_intent(intent, gateway_key)  # already captured: idempotent
        if intent["status"] != "requires_capture":
            msg = f"cannot capture a PaymentIntent in status {intent['status']}"
            raise GatewayRejected(msg, code="invalid_state")
        intents = self._client.v1.payment_intents
        captured = await self._send(
            lambda: intents.capture_async(
                intent["id"],
                params={"amount_to_capture": amount, "expand": _EXPAND},
                options={"idempotency_key": f"{gateway_key}:capture:{amount}"},
            )
        )
        return charge_from_intent(captured.to_dict(), gateway_key)

    async def void(self, gateway_key: str) -> Charge:
        intent = await self._require(gateway_key)
        if intent["status"] in {"canceled", "requires_payment_method"}:
            return charge_from_intent(intent, gateway_key)  # nothing (left) to release
        if intent["status"] == "succeeded":
            msg = "the charge is captured: refund it instead"
            raise GatewayRejected(msg, code="invalid_state")
        intents = self._client.v1.payment_intents
        canceled = await self._send(
            lambda: intents.cancel_async(
                intent["id"],
                params={"expand": _EXPAND},
                options={"idempotency_key": f"{gateway_key}:cancel"},
            )
        )
        return charge_from_intent(canceled.to_dict(), gateway_key)

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        _check_key(refund_key, "refund_key")
        intent = await self._require(gateway_key)
        refund = await self._find_refund(str(intent["id"]), refund_key)
        if refund is None:
            refunds = self._client.v1.refunds
            params = {
                "payment_intent": intent["id"],
                "amount": amount,
                "metadata": {REFUND_METADATA_KEY: refund_key, METADATA_KEY: gateway_key},
            }
            refund = await self._send(
                lambda: refunds.create_async(
                    params=cast("Any", params), options={"idempotency_key": refund_key}
                )
            )
        status = {"succeeded": "succeeded", "failed": "failed", "canceled": "failed"}
        return Refund(
            gateway=self.name,
            refund_key=refund_key,
            refund_id=refund.id,
            charge_id=str(intent["id"]),
            amount=refund.amount,
            currency=refund.currency.upper(),
            status=status.get(str(refund.status), "pending"),
        )

    async def _find_refund(self, intent_id: str, refund_key: str) -> Any:
        """The refund made under ``refund_key``, as it is now, or ``None``. Looked up first: a
        re-sent create is answered with the key's *first* response (a refund still "pending")
        for 24 h, and after that Stripe forgets the key and would refund a second time."""
        refunds = self._client.v1.refunds
        params: dict[str, Any] = {"payment_intent": intent_id, "limit": LIST_PAGE_SIZE}
        for _ in range(LIST_PAGES_MAX):
            page = await self._send(lambda: refunds.list_async(params=cast("Any", dict(params))))
            for listed in page.data:
                if (listed.to_dict().get("metadata") or {}).get(REFUND_METADATA_KEY) == refund_key:
                    return listed
            if not page.has_more or not page.data:
                return None
            params["starting_after"] = page.data[-1]["id"]
        msg = "too many refunds on this PaymentIntent to prove the key unused"
        raise GatewayUnavailable(msg)

    async def payout(self, request: PayoutRequest) -> Payout:
        key = _check_key(request.payout_key, "payout_key")
        if not request.destination.startswith("acct_"):
            msg = "a Stripe payout destination is a connected account id (acct_…)"
            raise GatewayRejected(msg, code="invalid_destination")
        transfers = self._client.v1.transfers
        params = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            "destination": request.destination,
            "metadata": {PAYOUT_METADATA_KEY: key},
            "transfer_group": key,  # what find_payout lists by, whatever the destination
        }
        transfer = await self._send(
            lambda: transfers.create_async(
                params=cast("Any", params), options={"idempotency_key": key}
            )
        )
        return Payout(
            gateway=self.name,
            payout_key=key,
            payout_id=transfer.id,
            amount=transfer.amount,
            currency=transfer.currency.upper(),
            status="failed" if transfer.reversed else "paid",
        )

    async def find_payout(self, payout_key: str) -> Payout | None:
        """The transfer made under ``payout_key`` (its ``transfer_group`` and metadata), found
        long after Stripe forgot the idempotency key (24 hours). Transfers made before
        ``transfer_group`` was set are not found: ``None`` proves nothing."""
        key = _check_key(payout_key, "payout_key")
        transfers = self._client.v1.transfers
        params: dict[str, Any] = {"transfer_group": key, "limit": LIST_PAGE_SIZE}
        matches = []
        for _ in range(LIST_PAGES_MAX):
            page = await self._send(lambda: transfers.list_async(params=cast("Any", dict(params))))
            matches += [
                t
                for t in page.data
                if (t.to_dict().get("metadata") or {}).get(PAYOUT_METADATA_KEY) == key
            ]
            if not page.has_more or not page.data:
                break
            params["starting_after"] = page.data[-1]["id"]
        if not matches:
            return None
        listed = matches[0]
        if len(matches) > 1:
            status = "duplicate"  # two transfers under one key: for a person to look at
        elif listed.reversed:
            status = "reversed"  # wholly: the money came back
        elif (listed.to_dict().get("amount_reversed") or 0) > 0:
            status = "partly_reversed"  # Stripe's `reversed` stays false until it is whole
        else:
            status = "paid"
        return Payout(
            gateway=self.name,
            payout_key=key,
            payout_id=listed.id,
            amount=listed.amount,
            currency=listed.currency.upper(),
            status=status,
        )

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        intent = await self._intent(gateway_key)
        return None if intent is None else charge_from_intent(intent, gateway_key)

    async def release_from_escrow(self, gateway_key: str) -> Charge:  # noqa: ARG002 - protocol
        msg = "Stripe has no gateway-side escrow; hammerlock holds escrow on its ledger"
        raise GatewayRejected(msg, code="escrow_unsupported")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        header = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER), None)
        if header is None:
            raise GatewayRejected("missing Stripe-Signature header", code="invalid_signature")
        if len(body) > WEBHOOK_BODY_MAX:
            raise GatewayRejected("webhook body too large", code="invalid_payload")
        verify_header(
            self._webhook_secret,
            header,
            body,
            now_s=int(self._now_s()),
            tolerance_s=self._webhook_tolerance_s,
        )
        return _event(body)


def _event(body: bytes) -> WebhookEvent:
    try:
        event = orjson.loads(body)
        obj = event["data"]["object"]
        event_id, event_type = str(event["id"]), str(event["type"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise GatewayRejected("not a Stripe event", code="invalid_payload") from error
    if not isinstance(obj, dict):
        raise GatewayRejected("not a Stripe event", code="invalid_payload")
    metadata = obj.get("metadata") or {}
    kind = obj.get("object")
    charge_id = obj.get("id") if kind == "payment_intent" else obj.get("payment_intent")
    created = event.get("created")
    return WebhookEvent(
        gateway="stripe",
        event_id=event_id,
        type=event_type,
        gateway_key=metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None,
        charge_id=str(charge_id) if charge_id else None,
        created_s=created if isinstance(created, int) else None,
    )
