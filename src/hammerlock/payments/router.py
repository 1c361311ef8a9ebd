"""Payment HTTP routes: intents, refunds, inbound gateway webhooks, the sandbox's charge list.

Answers: ``200`` with the intent when its state is settled for now (``succeeded``,
``requires_capture``, ``requires_action``, ``requires_review``, a decline back in
``requires_payment_method``…). ``202`` with the intent in ``processing`` when the gateway's
answer is not known yet (a timeout, a crash on the other side): that answer carries
``Hammerlock-Outcome: pending`` and is **not** stored for Idempotency-Key replay, so a retry
with the same key resumes the payment and answers with its outcome. A ``GET`` of an intent
always answers ``200`` with the intent as it stands, ``processing`` included.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import httpx
import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import AfterValidator, Field, StrictBool, StringConstraints, field_validator
from starlette.responses import Response

from hammerlock.api.deps import get_container, get_ctx
from hammerlock.api.policy import policy
from hammerlock.api.problems import ApiError
from hammerlock.api.route import HammerlockRoute
from hammerlock.api.schemas import MAX_SAFE_INT, ApiModel
from hammerlock.money.currency import get_currency
from hammerlock.money.errors import UnknownCurrency
from hammerlock.payments.gateways.base import GatewayError
from hammerlock.payments.model import CaptureMethod, IntentStatus, PaymentIntent, RefundReason
from hammerlock.payments.service import NewIntent, NewRefund
from hammerlock.payments.views import refund_json
from hammerlock.security.permissions import Permission

__all__ = ["OUTCOME_HEADER", "router"]

router = APIRouter(route_class=HammerlockRoute, tags=["payments"])

OUTCOME_HEADER = "Hammerlock-Outcome"
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
PaymentMethod = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{3,128}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Amount = Annotated[int, Field(ge=1, le=MAX_SAFE_INT, strict=True)]
Customer = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_PRINTABLE)]
Description = Annotated[str, StringConstraints(max_length=500, pattern=_PRINTABLE)]


def _parsable_url(value: str) -> str:
    """A URL the vault (httpx) can parse, with a host: refused here as 422 rather than after
    the card was detokenized for the charge."""
    try:
        host = httpx.URL(value).host  # decoded lazily: IDNA errors show here
    except (httpx.InvalidURL, ValueError):  # ValueError: IDNA labels, IP literals, ports
        raise ValueError("return_url is not a URL that can be parsed") from None
    if not host:
        raise ValueError("return_url needs a host")
    return value


ReturnUrl = Annotated[
    str,
    StringConstraints(max_length=2048, pattern=r"^https?://[^\s\x00-\x1f\x7f]+$"),
    AfterValidator(_parsable_url),
]
IntentId = Annotated[str, Path(pattern=r"^pi_[a-f0-9]{14,40}$")]
RefundId = Annotated[str, Path(pattern=r"^re_[a-f0-9]{14,40}$")]
GatewayName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{1,31}$")]
_METADATA_KEYS = 20
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_METADATA_VALUE_MAX = 500


def _metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if len(value) > _METADATA_KEYS:
        raise ValueError(f"metadata holds at most {_METADATA_KEYS} keys")
    for key, item in value.items():
        if not _METADATA_KEY.match(key):
            raise ValueError(f"metadata key {key[:40]!r}: letters, digits, _ . - (≤ 40)")
        if not isinstance(item, str) or len(item) > _METADATA_VALUE_MAX:
            raise ValueError(f"metadata[{key}] must be a string of ≤ {_METADATA_VALUE_MAX}")
    return value


def _known_currency(value: str) -> str:
    try:
        get_currency(value)
    except UnknownCurrency:
        raise ValueError(f"unknown currency {value!r} (ISO 4217 code expected)") from None
    return value


class PaymentIntentIn(ApiModel):
    amount: Amount
    currency: Currency
    payment_method: PaymentMethod | None = None
    capture_method: Literal["automatic", "manual"] = "automatic"
    confirm: StrictBool = False
    return_url: ReturnUrl | None = None
    customer: Customer | None = None
    description: Description | None = None
    metadata: dict[str, Any] | None = None

    _currency = field_validator("currency")(_known_currency)
    _meta = field_validator("metadata")(_metadata)


class ConfirmIn(ApiModel):
    return_url: ReturnUrl | None = None
    payment_method: PaymentMethod | None = None


class CaptureIn(ApiModel):
    amount_to_capture: Amount | None = None


class CancelIn(ApiModel):
    cancellation_reason: (
        Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"] | None
    ) = None


class RefundIn(ApiModel):
    payment_intent: Annotated[str, StringConstraints(pattern=r"^pi_[a-f0-9]{14,40}$")]
    amount: Amount | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer", "dispute"]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _intent_response(request: Request, intent: PaymentIntent) -> Response:
    body = await get_container(request).payments.view(intent)
    if intent.status is IntentStatus.PROCESSING:
        # Not final: the Idempotency-Key layer does not store it, so a retry resumes.
        return _json(body, 202, {OUTCOME_HEADER: "pending", "Retry-After": "1"})
    return _json(body)


def _action_key(request: Request) -> str | None:
    """Which request started an operation: its API key and Idempotency-Key."""
    idem = request.headers.get("idempotency-key")
    key_id = get_ctx(request).actor.key_id
    return None if idem is None or key_id is None else f"{key_id}:{idem}"[:320]


_WRITE = policy(Permission.PAYMENTS_WRITE, money_moving=True)


@router.post(
    "/v1/payment_intents",
    openapi_extra=_WRITE,
    summary="Create a payment intent (and confirm it with confirm=true)",
)
async def create_intent(request: Request, body: PaymentIntentIn) -> Response:
    container = get_container(request)
    intent = await container.payments.create(
        get_ctx(request),
        NewIntent(
            amount=body.amount,
            currency=body.currency,
            payment_method=body.payment_method,
            capture_method=CaptureMethod(body.capture_method),
            confirm=body.confirm,
            return_url=body.return_url,
            customer=body.customer,
            description=body.description,
            metadata=body.metadata or {},
        ),
        idempotency_key=request.headers.get("idempotency-key"),
    )
    return await _intent_response(request, intent)


@router.get(
    "/v1/payment_intents/{intent_id}",
    openapi_extra=policy(Permission.PAYMENTS_READ),
    summary="Retrieve a payment intent",
)
async def get_intent(request: Request, intent_id: IntentId) -> Response:
    """Always 200: a read shows the intent as stored, ``processing`` included (only a write
    whose gateway answer is not known yet answers 202)."""
    intent, _ = await get_container(request).payments.get(intent_id)
    return _json(await get_container(request).payments.view(intent))


@router.post(
    "/v1/payment_intents/{intent_id}/confirm",
    openapi_extra=_WRITE,
    summary="Confirm: authorize the card (3-D Secure when the bank asks)",
)
async def confirm_intent(request: Request, intent_id: IntentId, body: ConfirmIn) -> Response:
    intent = await get_container(request).payments.confirm(
        get_ctx(request),
        intent_id,
        return_url=body.return_url,
        payment_method=body.payment_method,
        action_key=_action_key(request),
    )
    return await _intent_response(request, intent)


@router.post(
    "/v1/payment_intents/{intent_id}/capture",
    openapi_extra=_WRITE,
    summary="Capture an authorized intent (partially: amount_to_capture)",
)
async def capture_intent(request: Request, intent_id: IntentId, body: CaptureIn) -> Response:
    intent = await get_container(request).payments.capture(
        get_ctx(request),
        intent_id,
        amount_to_capture=body.amount_to_capture,
        action_key=_action_key(request),
    )
    return await _intent_response(request, intent)


@router.post(
    "/v1/payment_intents/{intent_id}/cancel",
    openapi_extra=_WRITE,
    summary="Cancel an intent; an authorization is voided at the gateway",
)
async def cancel_intent(request: Request, intent_id: IntentId, body: CancelIn) -> Response:
    intent = await get_container(request).payments.cancel(
        get_ctx(request),
        intent_id,
        reason=body.cancellation_reason,
        action_key=_action_key(request),
    )
    return await _intent_response(request, intent)


@router.post(
    "/v1/refunds",
    openapi_extra=policy(Permission.REFUNDS_CREATE, money_moving=True),
    summary="Refund a succeeded payment, in full or in part (several times, never beyond it)",
)
async def create_refund(request: Request, body: RefundIn) -> Response:
    refund = await get_container(request).payments.refund(
        get_ctx(request),
        NewRefund(
            payment_intent=body.payment_intent,
            amount=body.amount,
            reason=RefundReason(body.reason),
        ),
        idempotency_key=request.headers.get("idempotency-key"),
    )
    if refund.status.value == "pending":
        return _json(refund_json(refund), 202, {OUTCOME_HEADER: "pending", "Retry-After": "1"})
    return _json(refund_json(refund))


@router.get(
    "/v1/refunds/{refund_id}",
    openapi_extra=policy(Permission.PAYMENTS_READ),
    summary="Retrieve a refund",
)
async def get_refund(request: Request, refund_id: RefundId) -> Response:
    return _json(refund_json(await get_container(request).payments.get_refund(refund_id)))


@router.post(
    "/v1/webhooks/{gateway}",
    openapi_extra=policy(Permission.PUBLIC, max_body_bytes=256 * 1024, raw_body=True),
    summary="Inbound gateway webhooks (verified by the gateway's signature)",
)
async def gateway_webhook(request: Request, gateway: GatewayName) -> Response:
    container = get_container(request)
    if gateway not in container.payments.gateways:
        raise ApiError("not_found", f"no gateway {gateway!r} is configured here")
    body = await request.body()
    try:
        first = await container.payments.gateway_webhook(
            get_ctx(request), gateway, dict(request.headers), body
        )
    except GatewayError as exc:
        raise ApiError("webhook_signature_invalid", exc.message) from None
    return _json({"received": True, "duplicate": not first})


@router.get(
    "/v1/sandbox/charges",
    openapi_extra=policy(Permission.SANDBOX_READ),
    summary="The sandbox gateway's charge records (amounts, status, keys; never card data)",
)
async def sandbox_charges(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
) -> Response:
    container = get_container(request)
    if container.vault is None:
        raise ApiError("service_unavailable", "no card vault is configured (HAMMERLOCK_VAULT_URL)")
    page = await container.vault.sandbox_charges(limit=limit, cursor=cursor)
    return _json(page)
