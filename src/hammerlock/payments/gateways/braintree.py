"""The Braintree adapter: transactions through the official ``braintree`` SDK.

The SDK is synchronous (``requests``); every call runs in a worker thread
(:func:`asyncio.to_thread`) under two bounds: the SDK's own ``(connect, read)`` timeout and an
overall deadline slightly longer, so no call can hang a request handler.

Mapping of the :class:`~hammerlock.payments.gateways.base.Gateway` protocol:

* ``authorize`` = ``transaction.sale`` with ``options.submit_for_settlement`` (sale) or not
  (authorize only). Amounts cross as decimal strings made by :class:`hammerlock.money.Money`.
* Idempotency: Braintree's REST API has no idempotency keys (its *At-Most-Once* request key is
  a limited-availability GraphQL feature), so our ``gateway_key`` is stored as the
  transaction's ``order_id``, and ``authorize`` **looks first**: ``transaction.search(order_id
  == key)``; only when nothing is found does it create (calls with one key are serialized
  within a process). A retry after a timeout therefore finds the first charge instead of making
  a second, and a reused key with another amount or currency is refused
  (``idempotency_key_reuse``), as Stripe does. ``retrieve_by_idempotency_key`` is the same
  search.
* Currency: a Braintree sale is in its merchant account's currency whatever we ask for, so
  only the configured ``currency`` (or one mapped to an account in ``merchant_accounts``) is
  charged; any other is refused before the call (``currency_unsupported``).
* The residual race: a retry whose search runs while the first request is still in flight
  inside Braintree finds nothing and creates again. Braintree's duplicate-transaction check
  (same amount, ``order_id`` and card within its window, 30 s by default) gateway-rejects most
  such second attempts with reason ``duplicate``; the adapter then searches again and answers
  with the first (or raises :class:`GatewayTimeout` while it is still invisible). Whatever gets
  past both is found later: whenever a search returns more than one live transaction for a key
  (the janitor's ``retrieve_by_idempotency_key`` runs one for every stuck intent), the earliest
  is kept and the others are voided (refunded when already settled) on the spot.
* ``capture`` = ``submit_for_settlement(amount)``; ``void`` = ``void``; ``refund`` =
  ``refund(amount, order_id=refund_key)`` after a search for that refund key (a refund before
  settlement, which Braintree refuses, voids the whole charge when the amount is the full amount).
* Braintree Marketplace: ``hold_in_escrow`` and ``service_fee_amount`` on the sale (with the
  sub-merchant's ``merchant_account_id``), and ``release_from_escrow``. The 4.x SDK dropped these
  helpers, so those requests go through the SDK's own authenticated XML client to the documented
  endpoints. A payout is Braintree's disbursement after release: ``payout`` is refused.
* Webhooks: ``bt_signature``/``bt_payload`` verified by ``webhook_notification.parse``. The
  signature binds no delivery timestamp, so a captured delivery stays valid: the receiver
  deduplicates by the event id (a digest of the payload) and re-fetches the transaction before
  acting, which makes a replay harmless.

Declines are a :class:`Charge` with status ``DECLINED``: processor response 2001 is
``insufficient_funds``, 2004 ``expired_card``, 2010 ``incorrect_cvc``, 3000 and ``failed``
``processing_error``, any other 2xxx ``card_declined``; ``decline_code`` says the issuer's
reason in Stripe's words (2046 ``generic_decline``, 2000 ``do_not_honor``, else
``processor_<code>``). Gateway rejections carry their reason in ``decline_code``
(``three_d_secure`` → ``authentication_required``, ``cvv`` → ``incorrect_cvc``).

Errors: a read timeout, our deadline or HTTP 504 is :class:`GatewayTimeout`; connection
failures, 5xx, 429 and 408 are :class:`GatewayUnavailable`; bad credentials, unknown
transactions and validation errors are :class:`GatewayRejected`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

import braintree
from braintree import exceptions as bt_errors
from braintree.exceptions import http as bt_http_errors
from braintree.exceptions.braintree_error import BraintreeError
from braintree.exceptions.http.timeout_error import ConnectTimeoutError
from pydantic import SecretStr

from hammerlock.money import Money
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

if TYPE_CHECKING:
    from hammerlock.settings import Settings

__all__ = ["BraintreeGateway", "custom_environment"]

KEY_RE: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,255}")
CACHE_MAX: Final = 10_000
SEARCH_RESULTS_MAX: Final = 20
WEBHOOK_BODY_MAX: Final = 1024 * 1024
_DEADLINE_MARGIN_S: Final = 2.0

_STATUS: Final = {
    "authorized": ChargeStatus.AUTHORIZED,
    "authorizing": ChargeStatus.AUTHORIZED,
    "submitted_for_settlement": ChargeStatus.CAPTURED,
    "settling": ChargeStatus.CAPTURED,
    "settled": ChargeStatus.CAPTURED,
    "settlement_pending": ChargeStatus.CAPTURED,
    "settlement_confirmed": ChargeStatus.CAPTURED,
    "voided": ChargeStatus.VOIDED,
    "authorization_expired": ChargeStatus.VOIDED,
    "processor_declined": ChargeStatus.DECLINED,
    "gateway_rejected": ChargeStatus.DECLINED,
    "failed": ChargeStatus.DECLINED,
    "settlement_declined": ChargeStatus.DECLINED,
}
_LIVE: Final = frozenset(
    {
        "authorized",
        "authorizing",
        "submitted_for_settlement",
        "settling",
        "settled",
        "settlement_pending",
        "settlement_confirmed",
    }
)
_PROCESSOR_CODES: Final = {
    "2001": DeclineCode.INSUFFICIENT_FUNDS,
    "2004": DeclineCode.EXPIRED_CARD,
    "2010": DeclineCode.INCORRECT_CVC,
    "3000": DeclineCode.PROCESSING_ERROR,
}
# Braintree processor response codes → the issuer reasons in Stripe's vocabulary (decline_code).
_ISSUER_REASONS: Final = {
    "2000": "do_not_honor",
    "2001": "insufficient_funds",
    "2002": "card_velocity_exceeded",
    "2004": "expired_card",
    "2005": "invalid_number",
    "2010": "incorrect_cvc",
    "2015": "transaction_not_allowed",
    "2038": "do_not_honor",
    "2044": "call_issuer",
    "2046": "generic_decline",
    "2047": "pickup_card",
    "3000": "processing_error",
}
_REJECTIONS: Final = {
    "three_d_secure": DeclineCode.AUTHENTICATION_REQUIRED,
    "cvv": DeclineCode.INCORRECT_CVC,
    "avs_and_cvv": DeclineCode.INCORRECT_CVC,
}
_NOT_SETTLED: Final = "91506"  # Cannot refund a transaction unless it is settled

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Found:
    """A sale found under a gateway key, with the sum of its refunds (minor units)."""

    tx: Any
    refunded: int = 0


def _secret(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _check_key(key: str, what: str) -> str:
    if KEY_RE.fullmatch(key) is None:
        msg = f"{what} must be 1-255 characters of [A-Za-z0-9_.:-]"
        raise GatewayRejected(msg, code="invalid_key")
    return key


def custom_environment(host: str) -> braintree.Environment:
    """An SDK environment for ``http(s)://host:port`` (a local fake, a proxy)."""
    parts = urlsplit(host)
    if parts.scheme not in {"http", "https"} or parts.hostname is None:
        msg = "the Braintree host must look like http://127.0.0.1:8080"
        raise ValueError(msg)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if (parts.scheme == "https") != (port == 443):
        msg = "the SDK speaks https only on port 443, http on any other"
        raise ValueError(msg)
    return braintree.Environment(
        "hammerlock-custom", parts.hostname, str(port), host, parts.scheme == "https", None
    )


def to_amount(minor: int, currency: str) -> str:
    """Minor units → Braintree's decimal string (``5000, "USD"`` → ``"50.00"``)."""
    return Money(minor, currency).format()


def from_amount(value: Any, currency: str) -> int:
    """Braintree's amount (a ``Decimal`` or string) → minor units; never through a float."""
    if value is None or value == "":
        return 0
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    return Money.parse(text, currency).minor


def decline_codes(tx: Any) -> tuple[str, str | None]:
    """A declined transaction → (``DeclineCode`` value, the finer reason)."""
    reason = getattr(tx, "gateway_rejection_reason", None) or None
    if tx.status == "gateway_rejected":
        return _REJECTIONS.get(str(reason), DeclineCode.CARD_DECLINED), reason
    code = str(getattr(tx, "processor_response_code", "") or "")
    reason = _ISSUER_REASONS.get(code, f"processor_{code}") if code else None
    if tx.status == "failed":
        return DeclineCode.PROCESSING_ERROR, reason
    return _PROCESSOR_CODES.get(code, DeclineCode.CARD_DECLINED), reason


def map_error(error: Exception) -> GatewayError:
    """SDK and transport exceptions → our error tree."""
    name = type(error).__name__
    if isinstance(error, ConnectTimeoutError | bt_http_errors.ConnectionError):
        return GatewayUnavailable(f"Braintree unreachable: {name}")
    if isinstance(error, bt_http_errors.TimeoutError | bt_errors.GatewayTimeoutError):
        return GatewayTimeout(f"no answer from Braintree in time: {name}")
    unavailable = (
        bt_errors.ServerError,
        bt_errors.ServiceUnavailableError,
        bt_errors.TooManyRequestsError,
        bt_errors.RequestTimeoutError,
        bt_errors.UnexpectedError,
        bt_http_errors.InvalidResponseError,
    )
    if isinstance(error, unavailable):
        return GatewayUnavailable(f"Braintree answered with an error: {name}")
    if isinstance(error, bt_errors.NotFoundError):
        return GatewayRejected("Braintree has no such transaction", code="charge_not_found")
    return GatewayRejected(f"Braintree refused the request: {name}")


class BraintreeGateway:
    """The :class:`Gateway` protocol on Braintree. One instance per Braintree merchant."""

    name = "braintree"

    def __init__(
        self,
        merchant_id: str,
        public_key: str,
        private_key: SecretStr | str,
        *,
        environment: str = "sandbox",
        host: str | None = None,
        merchant_account_id: str | None = None,
        currency: str = "USD",
        merchant_accounts: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if not 0 < timeout_s <= 300 or connect_timeout_s <= 0:
            msg = "need 0 < timeout_s <= 300 and connect_timeout_s > 0"
            raise ValueError(msg)
        env = (
            custom_environment(host)
            if host
            else braintree.Environment.parse_environment(environment)
        )
        self._timeout_s = timeout_s
        self._gateway = braintree.BraintreeGateway(
            braintree.Configuration(
                environment=env,
                merchant_id=merchant_id,
                public_key=public_key,
                private_key=_secret(private_key),
                timeout=(min(connect_timeout_s, timeout_s), timeout_s),
                wrap_http_exceptions=True,
            )
        )
        self._merchant_account_id = merchant_account_id
        self._currency = currency.upper()
        self._merchant_accounts = {k.upper(): v for k, v in (merchant_accounts or {}).items()}
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BraintreeGateway:
        """The gateway ``HAMMERLOCK_BRAINTREE_*`` describe; ``ValueError`` when unconfigured."""
        merchant, public = settings.braintree_merchant_id, settings.braintree_public_key
        private = settings.braintree_private_key
        if merchant is None or public is None or private is None:
            msg = "the braintree gateway needs HAMMERLOCK_BRAINTREE_MERCHANT_ID, _PUBLIC_KEY, "
            raise ValueError(msg + "_PRIVATE_KEY")
        options: dict[str, Any] = {
            "environment": settings.braintree_environment,
            "host": settings.braintree_host,
            "merchant_account_id": settings.braintree_merchant_account_id,
            "currency": settings.braintree_currency,
            "timeout_s": settings.braintree_timeout_s,
            **overrides,
        }
        return cls(merchant, public, private, **options)

    def __repr__(self) -> str:
        return f"BraintreeGateway(merchant_account_id={self._merchant_account_id!r})"

    async def aclose(self) -> None:
        """Close what the SDK lets us close (it keeps one ``requests`` session per worker
        thread; those of other threads go with their threads)."""
        self._gateway.config.close()

    # --- plumbing -------------------------------------------------------------------------

    async def _call(self, function: Callable[[], _T]) -> _T:
        """One blocking SDK call in a thread, bounded; SDK exceptions mapped."""
        try:
            async with asyncio.timeout(self._timeout_s + _DEADLINE_MARGIN_S):
                return await asyncio.to_thread(function)
        except TimeoutError as error:
            msg = f"no answer from Braintree within {self._timeout_s} s"
            raise GatewayTimeout(msg) from error
        except BraintreeError as error:
            raise map_error(error) from error

    def _path(self, suffix: str) -> str:
        return f"{self._gateway.config.base_merchant_path()}/transactions{suffix}"

    def _result(self, response: Mapping[str, Any]) -> Any:
        """The SDK's own result objects, for requests made through its HTTP client."""
        if "transaction" in response:
            transaction = braintree.Transaction(self._gateway, response["transaction"])
            return braintree.SuccessfulResult({"transaction": transaction})
        if "api_error_response" in response:
            return braintree.ErrorResult(self._gateway, response["api_error_response"])
        return None

    def _charge(self, tx: Any, gateway_key: str, refunded: int = 0) -> Charge:
        status = _STATUS.get(str(tx.status))
        if status is None:
            msg = f"unexpected Braintree transaction status {tx.status!r}"
            raise GatewayRejected(msg, code="unexpected_state")
        currency = str(tx.currency_iso_code)
        amount = from_amount(tx.amount, currency)
        authorized = _authorized_amount(tx, currency)
        error_code = decline_code = message = None
        if status is ChargeStatus.DECLINED:
            error_code, decline_code = decline_codes(tx)
            message = getattr(tx, "processor_response_text", None) or None
        return Charge(
            gateway=self.name,
            gateway_key=gateway_key,
            charge_id=str(tx.id),
            status=status,
            amount=authorized,
            currency=currency,
            amount_captured=amount if status is ChargeStatus.CAPTURED else 0,
            amount_refunded=refunded,
            error_code=error_code,
            decline_code=decline_code,
            message=message,
            card=_card(tx),
        )

    def _remember(self, gateway_key: str, transaction_id: str) -> None:
        self._ids[gateway_key] = transaction_id
        self._ids.move_to_end(gateway_key)
        while len(self._ids) > CACHE_MAX:
            self._ids.popitem(last=False)

    def _search_sync(self, order_id: str, kind: str) -> list[Any]:
        search = braintree.TransactionSearch
        found = self._gateway.transaction.search(search.order_id == order_id, search.type == kind)
        results = []
        for tx in found.items:
            if tx.order_id == order_id and tx.type == kind:  # defensive: exact match only
                results.append(tx)
            if len(results) >= SEARCH_RESULTS_MAX:
                break
        return results

    def _with_refunds_sync(self, tx: Any) -> _Found:
        refund_ids = list(getattr(tx, "refund_ids", None) or [])[:SEARCH_RESULTS_MAX]
        refunds = [self._gateway.transaction.find(i) for i in refund_ids]
        live = (r for r in refunds if r.status in _LIVE)
        currency = str(tx.currency_iso_code)
        return _Found(tx, sum(from_amount(r.amount, currency) for r in live))

    def _lookup_sync(self, gateway_key: str, known: str | None) -> _Found | None:
        """The one transaction for ``gateway_key`` (duplicates reversed), or ``None``. Runs in a
        worker thread: it touches no state of the adapter."""
        if known is not None:
            return self._with_refunds_sync(self._gateway.transaction.find(known))
        found = self._search_sync(gateway_key, braintree.Transaction.Type.Sale)
        if not found:
            return None
        return self._with_refunds_sync(self._canonical_sync(found))

    def _canonical_sync(self, found: list[Any]) -> Any:
        live = sorted((t for t in found if t.status in _LIVE), key=lambda t: (t.created_at, t.id))
        if not live:
            reversed_or_declined = sorted(found, key=lambda t: (t.created_at, t.id))
            voided = [t for t in reversed_or_declined if t.status == "voided"]
            return (voided or reversed_or_declined)[-1]
        for duplicate in live[1:]:  # one gateway key is one charge: undo any extra
            self._reverse_sync(duplicate)
        return live[0]

    def _reverse_sync(self, tx: Any) -> None:
        """Undo a duplicate sale: void it, or refund it once settled. Never silently fails."""
        if tx.status in {"authorized", "authorizing", "submitted_for_settlement"}:
            result = _checked(self._gateway.transaction.void(tx.id))
        elif getattr(tx, "refund_ids", None):
            return  # refunded by an earlier pass
        else:
            result = _checked(self._gateway.transaction.refund(tx.id, {"order_id": f"{tx.id}:dup"}))
        if result.is_success:
            return
        current = self._gateway.transaction.find(tx.id)  # another process may have done it
        if current.status not in _LIVE or getattr(current, "refund_ids", None):
            return
        msg = f"duplicate sale {tx.id} under one gateway key could not be reversed"
        raise GatewayRejected(f"{msg}: {result.message}", code="duplicate_not_reversed")

    async def _lookup(self, gateway_key: str) -> _Found | None:
        _check_key(gateway_key, "gateway_key")
        known = self._ids.get(gateway_key)
        found = await self._call(lambda: self._lookup_sync(gateway_key, known))
        if found is not None:
            self._remember(gateway_key, str(found.tx.id))
        return found

    async def _require(self, gateway_key: str) -> _Found:
        found = await self._lookup(gateway_key)
        if found is None:
            msg = "no Braintree transaction was made under this gateway key"
            raise GatewayRejected(msg, code="charge_not_found")
        return found

    async def _current(self, gateway_key: str) -> Charge:
        found = await self._require(gateway_key)
        return self._charge(found.tx, gateway_key, found.refunded)

    # --- the protocol ---------------------------------------------------------------------

    def _sale_params(self, request: AuthorizeRequest) -> dict[str, Any]:
        currency = request.currency.upper()
        options: dict[str, Any] = {"submit_for_settlement": request.capture}
        params: dict[str, Any] = {
            "amount": to_amount(request.amount, currency),
            "order_id": request.gateway_key,
            "options": options,
        }
        # A Braintree sale is in its merchant account's currency, whatever we ask for: refuse
        # a currency no configured account settles in, rather than charge 50.00 USD for 50 EUR.
        if currency in self._merchant_accounts:
            account: str | None = self._merchant_accounts[currency]
        elif currency == self._currency:
            account = self._merchant_account_id
        else:
            msg = f"no Braintree merchant account is configured for {currency}"
            raise GatewayRejected(msg, code="currency_unsupported")
        if account is not None:
            params["merchant_account_id"] = account
        if request.force_three_d_secure:
            options["three_d_secure"] = {"required": True}
        if request.hold_in_escrow:
            options["hold_in_escrow"] = True
        if request.service_fee_amount is not None:
            params["service_fee_amount"] = to_amount(request.service_fee_amount, currency)
        params.update(_source_params(request))
        return params

    def _create_sync(self, params: dict[str, Any]) -> Any:
        marketplace = "service_fee_amount" in params or "hold_in_escrow" in params["options"]
        if not marketplace:
            return _checked(self._gateway.transaction.sale(params))
        # The 4.x SDK no longer knows the Marketplace fields: same client, documented endpoint.
        body = {"transaction": {**params, "type": braintree.Transaction.Type.Sale}}
        return _checked(self._result(self._gateway.config.http().post(self._path(""), body)))

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        key = _check_key(request.gateway_key, "gateway_key")
        params = self._sale_params(request)
        async with self._key_lock(key):  # one authorize per key at a time in this process
            existing = await self._lookup(key)  # look first: a retry finds the first charge
            if existing is not None:
                return self._same_request(
                    self._charge(existing.tx, key, existing.refunded), request
                )
            return await self._create(key, params, request.currency.upper())

    def _key_lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    @staticmethod
    def _same_request(charge: Charge, request: AuthorizeRequest) -> Charge:
        """Stripe's rule for a reused key: different parameters are an error, not a replay."""
        same_amount = charge.amount == request.amount and charge.currency == request.currency
        if not same_amount:
            msg = "this gateway key was used for a different amount or currency"
            raise GatewayRejected(msg, code="idempotency_key_reuse")
        return charge

    async def _create(self, key: str, params: dict[str, Any], currency: str) -> Charge:
        result = await self._call(lambda: self._create_sync(params))
        tx = result.transaction
        if tx is None:
            message = str(result.message)
            raise GatewayRejected(f"Braintree refused the sale: {message}", code="invalid_request")
        if tx.status == "gateway_rejected" and tx.gateway_rejection_reason == "duplicate":
            return await self._after_duplicate(key)
        self._remember(key, tx.id)
        if tx.status in _LIVE and str(tx.currency_iso_code) != currency:
            await self._call(lambda: _checked(self._gateway.transaction.void(tx.id)))
            msg = f"the merchant account settles in {tx.currency_iso_code}, not {currency}"
            raise GatewayRejected(msg, code="currency_mismatch")
        return self._charge(tx, key)

    async def _after_duplicate(self, key: str) -> Charge:
        """Braintree saw this sale already: answer with that one once it is visible."""
        self._ids.pop(key, None)
        first = await self._lookup(key)
        if first is None or first.tx.status == "gateway_rejected":
            msg = "the first attempt under this key is still in flight at Braintree"
            raise GatewayTimeout(msg)
        return self._charge(first.tx, key, first.refunded)

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        found = await self._require(gateway_key)
        tx = found.tx
        if _STATUS.get(tx.status) is ChargeStatus.CAPTURED:
            return self._charge(tx, gateway_key, found.refunded)  # already captured
        if tx.status != "authorized":
            msg = f"cannot capture a Braintree transaction in status {tx.status}"
            raise GatewayRejected(msg, code="invalid_state")
        value = to_amount(amount, str(tx.currency_iso_code))
        result = await self._call(
            lambda: _checked(self._gateway.transaction.submit_for_settlement(tx.id, value))
        )
        return await self._after_change(result, gateway_key)

    async def void(self, gateway_key: str) -> Charge:
        found = await self._require(gateway_key)
        tx = found.tx
        if tx.status not in _LIVE:
            return self._charge(tx, gateway_key, found.refunded)  # nothing (left) to release
        if tx.status not in {"authorized", "authorizing"}:
            msg = "the charge is captured: refund it instead"
            raise GatewayRejected(msg, code="invalid_state")
        result = await self._call(lambda: _checked(self._gateway.transaction.void(tx.id)))
        return await self._after_change(result, gateway_key)

    async def _after_change(self, result: Any, gateway_key: str) -> Charge:
        if result.is_success:
            return await self._current(gateway_key)
        # Lost a race or repeated an earlier call: answer with the state Braintree has now.
        self._ids.pop(gateway_key, None)
        current = await self._current(gateway_key)
        if current.status is ChargeStatus.AUTHORIZED:
            codes = ", ".join(str(e.code) for e in result.errors.deep_errors)
            msg = f"Braintree refused: {result.message} ({codes})"
            raise GatewayRejected(msg, code="invalid_state")
        return current

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        _check_key(refund_key, "refund_key")
        tx = (await self._require(gateway_key)).tx
        full = amount == from_amount(tx.amount, tx.currency_iso_code)
        if tx.status == "voided" and _was_captured(tx) and full:
            return self._void_refund(tx, refund_key)  # a replay of a refund made by voiding
        credit = braintree.Transaction.Type.Credit
        done = await self._call(lambda: self._search_sync(refund_key, credit))
        if done:
            return self._refund(done[0], refund_key, tx)
        value = to_amount(amount, str(tx.currency_iso_code))
        result = await self._call(
            lambda: _checked(
                self._gateway.transaction.refund(tx.id, {"amount": value, "order_id": refund_key})
            )
        )
        if result.is_success:
            return self._refund(result.transaction, refund_key, tx)
        codes = {e.code for e in result.errors.deep_errors}
        if _NOT_SETTLED in codes and full and tx.status == "submitted_for_settlement":
            return await self._refund_by_void(tx, refund_key, gateway_key)
        msg = f"Braintree refused the refund: {result.message}"
        raise GatewayRejected(msg, code="refund_rejected")

    async def _refund_by_void(self, tx: Any, refund_key: str, gateway_key: str) -> Refund:
        """A full refund before settlement: voiding the sale returns all of it."""
        result = await self._call(lambda: _checked(self._gateway.transaction.void(tx.id)))
        if not result.is_success:
            msg = f"Braintree refused the refund: {result.message}"
            raise GatewayRejected(msg, code="refund_rejected")
        self._ids.pop(gateway_key, None)
        return self._void_refund(tx, refund_key)

    def _void_refund(self, tx: Any, refund_key: str) -> Refund:
        return Refund(
            gateway=self.name,
            refund_key=refund_key,
            refund_id=str(tx.id),
            charge_id=str(tx.id),
            amount=from_amount(tx.amount, tx.currency_iso_code),
            currency=str(tx.currency_iso_code),
            status="succeeded",
        )

    def _refund(self, credit: Any, refund_key: str, sale: Any) -> Refund:
        currency = str(credit.currency_iso_code)
        ok = credit.status in _LIVE
        return Refund(
            gateway=self.name,
            refund_key=refund_key,
            refund_id=str(credit.id),
            charge_id=str(sale.id),
            amount=from_amount(credit.amount, currency),
            currency=currency,
            status="succeeded" if ok else "failed",
        )

    async def payout(self, request: PayoutRequest) -> Payout:  # noqa: ARG002 - the protocol's
        msg = "Braintree pays sub-merchants itself after release_from_escrow; no payout call"
        raise GatewayRejected(msg, code="payout_unsupported")

    async def find_payout(self, payout_key: str) -> Payout | None:  # noqa: ARG002 - protocol's
        return None  # no payout call is ever made here (above): none to find

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        found = await self._lookup(gateway_key)
        return None if found is None else self._charge(found.tx, gateway_key, found.refunded)

    async def release_from_escrow(self, gateway_key: str) -> Charge:
        found = await self._require(gateway_key)
        tx = found.tx
        escrow = getattr(tx, "escrow_status", None) or None
        if escrow in {"release_pending", "released"}:
            return self._charge(tx, gateway_key, found.refunded)  # already released
        if escrow != "held":
            msg = f"escrow status is {escrow or 'none'}; only held funds can be released"
            raise GatewayRejected(msg, code="escrow_not_held")
        http = self._gateway.config.http()
        path = self._path(f"/{tx.id}/release_from_escrow")
        result = await self._call(lambda: _checked(self._result(http.put(path, {}))))
        return await self._after_change(result, gateway_key)

    def parse_webhook(
        self,
        headers: Mapping[str, str],  # noqa: ARG002 - the protocol's; Braintree signs the body
        body: bytes,
    ) -> WebhookEvent:
        if len(body) > WEBHOOK_BODY_MAX:
            raise GatewayRejected("webhook body too large", code="invalid_payload")
        try:
            form = parse_qs(body.decode("ascii", "replace"), max_num_fields=8)
        except ValueError as error:
            raise GatewayRejected("not a Braintree webhook", code="invalid_payload") from error
        signature = next(iter(form.get("bt_signature", [])), None)
        payload = next(iter(form.get("bt_payload", [])), None)
        if not signature or not payload:
            raise GatewayRejected("missing bt_signature/bt_payload", code="invalid_signature")
        try:
            notification = self._gateway.webhook_notification.parse(signature, payload)
        except bt_errors.InvalidSignatureError as error:
            raise GatewayRejected(str(error), code="invalid_signature") from error
        tx = getattr(notification, "transaction", None)
        timestamp = getattr(notification, "timestamp", None)
        digest = hashlib.sha256(base64.b64decode(payload)).hexdigest()
        return WebhookEvent(
            gateway=self.name,
            event_id=f"bt_{digest[:40]}",
            type=str(notification.kind),
            gateway_key=(getattr(tx, "order_id", None) or None) if tx is not None else None,
            charge_id=str(tx.id) if tx is not None else None,
            created_s=int(timestamp.timestamp()) if isinstance(timestamp, datetime) else None,
        )


def _source_params(request: AuthorizeRequest) -> dict[str, Any]:
    source = request.source
    if isinstance(source, GatewayToken):
        return {"payment_method_nonce": source.value}
    if isinstance(source, CardData):
        card: dict[str, Any] = {
            "number": source.number,
            "expiration_month": f"{source.exp_month:02d}",
            "expiration_year": str(source.exp_year),
        }
        if source.cvc is not None:
            card["cvv"] = source.cvc
        if source.name is not None:
            card["cardholder_name"] = source.name
        return {"credit_card": card}
    msg = "vault tokens are detokenized inside the vault, which forwards CardData"
    raise GatewayRejected(msg, code="invalid_source")


def _checked(result: Any) -> Any:
    """An SDK result; ``None`` when Braintree answered neither a transaction nor errors."""
    if result is None:
        msg = "Braintree answered with neither a transaction nor errors"
        raise GatewayUnavailable(msg)
    return result


def _was_captured(tx: Any) -> bool:
    history = getattr(tx, "status_history", None) or []
    return any(getattr(e, "status", None) == "submitted_for_settlement" for e in history)


def _authorized_amount(tx: Any, currency: str) -> int:
    """The authorized amount: a partial settlement rewrites ``amount``, not the history."""
    for event in getattr(tx, "status_history", None) or []:
        if getattr(event, "status", None) == "authorized":
            return from_amount(event.amount, currency)
    return from_amount(tx.amount, currency)


def _card(tx: Any) -> CardSummary | None:
    details = getattr(tx, "credit_card_details", None)
    if details is None:
        return None
    return CardSummary(
        brand=(getattr(details, "card_type", None) or "").lower() or None,
        last4=getattr(details, "last_4", None) or None,
        country=getattr(details, "country_of_issuance", None) or None,
        fingerprint=getattr(details, "unique_number_identifier", None) or None,
    )
