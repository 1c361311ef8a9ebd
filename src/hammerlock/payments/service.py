"""Payment intents, refunds and their reviews: one method per business event.

Gateway calls never sit inside a database transaction. Every call follows one pattern:

1. in a transaction, move the intent to ``processing`` with the operation and its gateway key
   (derived from the intent id, the operation and the attempt number), and commit;
2. call the gateway with that key (outside any transaction);
3. in a transaction, apply the outcome — state, ledger transfers, audit event, webhook — and
   commit, only if the intent is still waiting for that very operation (a compare-and-set).

A crash or a timeout between 1 and 3 leaves ``processing``. Whoever comes next — the client's
retry (which finds the intent by the API key and Idempotency-Key that created it) or the janitor
after a grace period — repeats step 2 with the *same* key: the gateway answers with the first
charge rather than making a second, and a gateway with no record of the key never charged.

Ledger (docs/payments.md): an authorization is a pending transfer ``gateway:{name}:{CUR} →
destination``; a capture posts it (partially allowed), a cancel or expiry voids it, a refund is
a new transfer back ``destination → gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, TypeVar

import structlog
from sqlalchemy.exc import IntegrityError

from hammerlock.audit import service as audit
from hammerlock.audit.model import AuditEvent, Context, Outcome
from hammerlock.db.engine import Database
from hammerlock.db.queues import Cursors
from hammerlock.db.rows import Along
from hammerlock.db.uow import UnitOfWork
from hammerlock.ledger import service as ledger
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    LedgerInvariantError,
    TransferFlag,
    TransferInput,
)
from hammerlock.payments import storage
from hammerlock.payments.errors import (
    AlreadyRefunded,
    AmountTooLarge,
    IntentNotFound,
    InvalidTransition,
    PaymentMethodRequired,
    RefundNotFound,
    UnknownGateway,
)
from hammerlock.payments.gateways.base import (
    DISPUTE_CREATED,
    AuthorizeRequest,
    Charge,
    ChargeStatus,
    Gateway,
    GatewayError,
    GatewayRejected,
    GatewayToken,
    GatewayUnavailable,
    VaultToken,
    WebhookEvent,
)
from hammerlock.payments.model import (
    CaptureMethod,
    IntentStatus,
    PaymentIntent,
    PendingOp,
    Purpose,
    Refund,
    RefundReason,
    RefundStatus,
    Review,
    ReviewStatus,
    authorization_days,
    can_cancel,
    country_alpha2,
    gateway_key,
    new_id,
)
from hammerlock.payments.views import intent_json, refund_json, review_json
from hammerlock.risk import review as review_rules
from hammerlock.risk import storage as review_storage
from hammerlock.risk.errors import ReviewNotFound
from hammerlock.security.pan import contains_pan
from hammerlock.webhooks import service as webhooks

__all__ = [
    "Chargeback",
    "ChargebackBooking",
    "ChargebackHook",
    "NeverReview",
    "NewIntent",
    "NewRefund",
    "Payments",
    "PaymentsConfig",
    "ReviewNeed",
    "RiskAssessor",
    "charged_back",
]

log = structlog.get_logger("hammerlock.payments")
T = TypeVar("T")

_MAX_STEPS: Final = 4  # authorize → capture is two; a bound, not a loop
_DAY_US: Final = 86_400 * 1_000_000
_JANITOR_BATCH: Final = 100
_LEDGER_OK: Final = frozenset({"ok", "exists"})
_UNREACHED_RETRIES: Final = 2  # quick in-request retries when the gateway was never reached
_UNREACHED_DELAY_S: Final = 0.2


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    default_gateway: str = "sandbox"
    janitor_grace_s: float = 10.0
    review_margin_s: int = 12 * 3600  # an open review is rejected this long before the auth lapses
    authorization_days: Mapping[str, int] = field(default_factory=dict)
    three_ds_above: Mapping[str, int] = field(default_factory=dict)  # currency → minor; off


@dataclass(frozen=True, slots=True)
class NewIntent:
    amount: int
    currency: str
    payment_method: str | None
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC
    confirm: bool = False
    return_url: str | None = None
    customer: str | None = None
    description: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    purpose: Purpose = Purpose.PAYMENT
    destination_account: str | None = None
    gateway: str | None = None


@dataclass(frozen=True, slots=True)
class NewRefund:
    payment_intent: str
    amount: int | None
    reason: RefundReason
    # Domain callers only (never the public route): the ledger account the refund is paid from,
    # instead of the intent's destination (escrow refunds after release: platform:refunds:{CUR}).
    source_account: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewNeed:
    approvals_required: int
    score: int
    reasons: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Chargeback:
    """A gateway's chargeback on one of our payments: the bank took ``amount`` back."""

    payment_intent: str
    gateway: str
    dispute_id: str
    amount: int
    currency: str


ChargebackBooking = Callable[[], Awaitable[bool]]
"""Books the chargeback on the ledger, in the caller's transaction: True when it is new."""
ChargebackHook = Callable[[UnitOfWork, Context, Chargeback, ChargebackBooking], Awaitable[object]]
"""A domain's reaction to a chargeback on its payment, around the booking, in its transaction
(escrow: freeze the order's release; wired by the composition root). The hook locks its own rows
first, then calls the booking exactly once (which locks the ledger accounts) and reacts only if
it answered True: every transaction takes the domain's row before the ledger's, so a chargeback
and a payout's completion on one order never deadlock."""
_DISPUTE_ID_MAX: Final = 64
_MAX_SAFE_AMOUNT: Final = 2**53 - 1
_CHARGEBACK_CODE: Final = "payment.chargeback"  # ledger code of `{intent}:chargeback.{dispute}`


async def charged_back(uow: UnitOfWork, intent_id: str) -> int:
    """What chargebacks took back from payment intent ``intent_id`` so far, in the caller's
    transaction, with the intent's row locked: a chargeback being booked on it
    (:meth:`Payments.chargeback`, which locks the row first) is either counted here or comes
    after this transaction and finds what the caller made of it. 0 for an unknown intent."""
    intent = await storage.get_intent(uow, intent_id, for_update=True)
    if intent is None:
        return 0
    return await ledger.sum_debited(
        uow,
        f"platform:chargebacks:{intent.currency}",
        code=_CHARGEBACK_CODE,
        id_prefix=f"{intent.id}:chargeback.",
    )


class RiskAssessor(Protocol):
    """Decides whether a payment or refund needs a human (``hammerlock.risk.service``)."""

    async def for_payment(
        self, uow: UnitOfWork, intent: PaymentIntent, charge: Charge
    ) -> ReviewNeed | None: ...

    async def for_refund(
        self, uow: UnitOfWork, intent: PaymentIntent, amount: int
    ) -> ReviewNeed | None: ...


class NeverReview:
    """An assessor that never asks for a review (tests of the bare payment flow)."""

    async def for_payment(
        self,
        uow: UnitOfWork,  # noqa: ARG002 - the protocol's signature
        intent: PaymentIntent,  # noqa: ARG002
        charge: Charge,  # noqa: ARG002
    ) -> ReviewNeed | None:
        return None

    async def for_refund(
        self,
        uow: UnitOfWork,  # noqa: ARG002 - the protocol's signature
        intent: PaymentIntent,  # noqa: ARG002
        amount: int,  # noqa: ARG002
    ) -> ReviewNeed | None:
        return None


def _fresh_id(prefix: str, now_us: int) -> str:
    """A new id that the API's card-number guard will never mistake for a PAN (a hex id can
    hold a Luhn-valid digit run with a brand's prefix, a few in ten thousand): re-drawn."""
    while True:
        candidate = new_id(prefix, now_us, secrets.token_hex(6))
        if not contains_pan(candidate):
            return candidate


def _ensure_ledger(results: list[str], what: str) -> None:
    if not set(results) <= _LEDGER_OK:
        raise LedgerInvariantError(f"ledger refused {what}: {results}")


class Payments:
    """The payments service. One per process; holds no state but its collaborators."""

    def __init__(
        self,
        db: Database,
        gateways: Mapping[str, Gateway],
        *,
        config: PaymentsConfig | None = None,
        risk: RiskAssessor | None = None,
        on_chargeback: ChargebackHook | None = None,
    ) -> None:
        self.db = db
        self.gateways = gateways
        self.config = config or PaymentsConfig()
        self.risk: RiskAssessor = risk or NeverReview()
        # set by the composition root once escrow exists (escrow is built on payments)
        self.on_chargeback = on_chargeback
        # PostgreSQL: the audit and webhook INSERTs of a transition's transaction, by id() of its
        # unit of work, held back to ride along the intent's UPDATE (one round trip; `_save`).
        self._along: dict[int, Along] = {}
        self._cursors = Cursors()  # where each janitor queue stopped (round-robin)

    # -- reads -----------------------------------------------------------------------------

    async def get(self, intent_id: str) -> tuple[PaymentIntent, Review | None]:
        async with self.db.read() as uow:
            intent = await storage.get_intent(uow, intent_id)
            if intent is None:
                raise IntentNotFound(f"no payment intent {intent_id!r}")
            return intent, await self._review_of(uow, intent)

    async def read(self, uow: UnitOfWork, intent_id: str) -> PaymentIntent:
        """The intent, read in the caller's unit of work (a domain's read of its own)."""
        intent = await storage.get_intent(uow, intent_id)
        if intent is None:
            raise IntentNotFound(f"no payment intent {intent_id!r}")
        return intent

    async def _review_of(self, uow: UnitOfWork, intent: PaymentIntent) -> Review | None:
        if intent.review_id is None:
            return None
        found = await review_storage.get_review(uow, intent.review_id)
        return None if found is None else found[0]

    async def view(self, intent: PaymentIntent) -> dict[str, Any]:
        if intent.review_id is None:  # nothing to read
            return intent_json(intent, None)
        async with self.db.read() as uow:
            return intent_json(intent, await self._review_of(uow, intent))

    # -- create and confirm ----------------------------------------------------------------

    def _gateway(self, name: str) -> Gateway:
        gateway = self.gateways.get(name)
        if gateway is None:
            raise UnknownGateway(
                f"gateway {name!r} is not configured here (configured: "
                f"{', '.join(sorted(self.gateways)) or 'none'})"
            )
        return gateway

    async def create(
        self,
        ctx: Context,
        new: NewIntent,
        *,
        idempotency_key: str | None,
        scope: str | None = None,
    ) -> PaymentIntent:
        """Create an intent (and confirm it when asked). A re-run of the same request (same API
        key and Idempotency-Key) finds the intent it made and resumes it."""
        gateway_name = new.gateway or self.config.default_gateway
        self._gateway(gateway_name)
        key_id = scope or ctx.actor.key_id
        for attempt in range(2):
            try:
                async with self.db.transaction() as uow:
                    existing = None
                    if key_id is not None and idempotency_key is not None:
                        existing = await storage.find_intent_by_request(
                            uow, key_id, idempotency_key
                        )
                    if existing is None:
                        intent = await self._insert(
                            uow, ctx, new, gateway_name, request=(key_id, idempotency_key)
                        )
                break
            except IntegrityError:
                if attempt:  # a concurrent twin won the unique pair: the lookup finds it now
                    raise
        if existing is not None:
            if new.confirm and existing.status is IntentStatus.REQUIRES_CONFIRMATION:
                return await self.confirm(ctx, existing.id)
            return await self.drive(ctx, existing.id)
        if new.confirm:
            return await self.confirm(ctx, intent.id)
        return intent

    async def _insert(
        self,
        uow: UnitOfWork,
        ctx: Context,
        new: NewIntent,
        gateway_name: str,
        *,
        request: tuple[str | None, str | None],
    ) -> PaymentIntent:
        key_id, idempotency_key = request
        now = uow.clock.now_us()
        intent = PaymentIntent(
            id=_fresh_id("pi", now),
            status=(
                IntentStatus.REQUIRES_CONFIRMATION
                if new.payment_method
                else IntentStatus.REQUIRES_PAYMENT_METHOD
            ),
            amount=new.amount,
            currency=new.currency,
            capture_method=new.capture_method,
            purpose=new.purpose,
            payment_method=new.payment_method,
            gateway=gateway_name,
            destination_account=new.destination_account or f"platform:unallocated:{new.currency}",
            customer=new.customer,
            description=new.description,
            metadata=dict(new.metadata),
            return_url=new.return_url,
            created_by_key_id=key_id,
            created_by_principal=ctx.actor.principal_id,
            idempotency_key=idempotency_key,
            action_key=None,
            attempt=0,
            pending_op=None,
            pending_key=None,
            pending_amount=None,
            pending_since_us=None,
            authorize_key=None,
            charge_id=None,
            amount_capturable=0,
            amount_received=0,
            amount_refunded=0,
            last_error_code=None,
            last_error_message=None,
            last_decline_code=None,
            next_action_url=None,
            card_brand=None,
            card_last4=None,
            card_fingerprint=None,
            card_country=None,
            authorization_expires_us=None,
            review_id=None,
            canceled_reason=None,
            created_us=now,
            updated_us=now,
            version=0,
        )
        if uow.is_postgres:  # the row and its audit event in one statement
            event = self._audit_event(uow, ctx, intent, "payments.intent.create")
            await storage.insert_intent_with(uow, intent, along=[audit.outbox_insert(event)])
        else:
            await storage.insert_intent(uow, intent)
            await self._audit(uow, ctx, intent, "payments.intent.create")
        return intent

    async def confirm(
        self,
        ctx: Context,
        intent_id: str,
        *,
        return_url: str | None = None,
        payment_method: str | None = None,
        action_key: str | None = None,
    ) -> PaymentIntent:
        async def start(uow: UnitOfWork, intent: PaymentIntent) -> PaymentIntent | None:
            if intent.status is IntentStatus.PROCESSING:
                return None  # resume below
            if intent.status not in {
                IntentStatus.REQUIRES_CONFIRMATION,
                IntentStatus.REQUIRES_PAYMENT_METHOD,
            }:
                raise InvalidTransition(
                    f"payment intent {intent.id} is {intent.status.value}; only an intent that "
                    "requires confirmation or a payment method can be confirmed"
                )
            method = payment_method or intent.payment_method
            if method is None:
                raise PaymentMethodRequired(
                    "attach a payment_method (a tok_… from the vault) to confirm this intent"
                )
            attempt = intent.attempt + 1
            started = replace(
                intent,
                status=IntentStatus.PROCESSING,
                payment_method=method,
                return_url=return_url or intent.return_url,
                attempt=attempt,
                pending_op=PendingOp.AUTHORIZE,
                pending_key=gateway_key(intent.id, PendingOp.AUTHORIZE, attempt),
                pending_amount=intent.amount,
                pending_since_us=uow.clock.now_us(),
                last_error_code=None,
                last_error_message=None,
                last_decline_code=None,
                next_action_url=None,
            )
            await self._audit(uow, ctx, started, "payments.intent.confirm")
            return started

        return await self._act(ctx, intent_id, action_key, start)

    # -- capture, cancel -------------------------------------------------------------------

    async def capture(
        self,
        ctx: Context,
        intent_id: str,
        *,
        amount_to_capture: int | None,
        action_key: str | None = None,
    ) -> PaymentIntent:
        async def start(uow: UnitOfWork, intent: PaymentIntent) -> PaymentIntent | None:
            if intent.status is IntentStatus.PROCESSING and intent.pending_op is PendingOp.CAPTURE:
                return None
            if intent.status is not IntentStatus.REQUIRES_CAPTURE:
                raise InvalidTransition(
                    f"payment intent {intent.id} is {intent.status.value}; only an intent in "
                    "requires_capture can be captured"
                )
            amount = intent.amount_capturable if amount_to_capture is None else amount_to_capture
            if amount > intent.amount_capturable:
                raise AmountTooLarge(
                    f"amount_to_capture {amount} is more than the {intent.amount_capturable} "
                    "authorized",
                    amount_capturable=intent.amount_capturable,
                )
            started = self._begin(uow, intent, PendingOp.CAPTURE, amount)
            await self._audit(uow, ctx, started, "payments.intent.capture")
            return started

        return await self._act(ctx, intent_id, action_key, start)

    async def cancel(
        self,
        ctx: Context,
        intent_id: str,
        *,
        reason: str | None,
        action_key: str | None = None,
    ) -> PaymentIntent:
        async def start(uow: UnitOfWork, intent: PaymentIntent) -> PaymentIntent | None:
            if intent.status is IntentStatus.CANCELED:
                return None
            if intent.status is IntentStatus.PROCESSING and intent.pending_op is PendingOp.VOID:
                return None
            if not can_cancel(intent.status):
                raise InvalidTransition(
                    f"payment intent {intent.id} is {intent.status.value} and cannot be canceled"
                    + (" (refund it instead)" if intent.status is IntentStatus.SUCCEEDED else "")
                )
            return await self._cancel_now(uow, ctx, intent, reason or "requested_by_customer")

        return await self._act(ctx, intent_id, action_key, start)

    async def _act(
        self,
        ctx: Context,
        intent_id: str,
        action_key: str | None,
        start: Callable[[UnitOfWork, PaymentIntent], Awaitable[PaymentIntent | None]],
    ) -> PaymentIntent:
        """Start an operation (confirm, capture, cancel), then drive it. A retry of the request
        that started the current operation (same API key and Idempotency-Key, ``action_key``)
        resumes it — even after a 202 pending answer — instead of starting another attempt."""
        started = False

        async def guarded(uow: UnitOfWork, intent: PaymentIntent) -> PaymentIntent | None:
            nonlocal started
            if action_key is not None and intent.action_key == action_key:
                return None
            new = await start(uow, intent)
            if new is not None:
                started = True
                new = replace(new, action_key=action_key)
            return new

        current = await self._transition(intent_id, guarded)
        return await self.drive(ctx, intent_id, fresh=started, intent=current)

    async def _cancel_now(
        self, uow: UnitOfWork, ctx: Context, intent: PaymentIntent, reason: str
    ) -> PaymentIntent:
        """Cancel at once when nothing is held at the gateway; else start a void."""
        if intent.status is IntentStatus.REQUIRES_REVIEW and intent.review_id is not None:
            await self._close_review(uow, intent.review_id, "canceled with its payment")
        held = intent.authorize_key is not None or intent.status is IntentStatus.REQUIRES_ACTION
        if not held:
            canceled = replace(
                intent, status=IntentStatus.CANCELED, canceled_reason=reason, pending_op=None
            )
            await self._audit(uow, ctx, canceled, "payments.intent.cancel")
            await self._webhook(uow, "payment_intent.canceled", canceled)
            return canceled
        started = self._begin(uow, intent, PendingOp.VOID, None)
        started = replace(started, canceled_reason=reason)
        await self._audit(uow, ctx, started, "payments.intent.cancel")
        return started

    def _begin(
        self, uow: UnitOfWork, intent: PaymentIntent, op: PendingOp, amount: int | None
    ) -> PaymentIntent:
        key = intent.authorize_key or intent.pending_key
        if key is None:
            raise LedgerInvariantError(f"{intent.id}: no gateway charge to {op.value}")
        return replace(
            intent,
            status=IntentStatus.PROCESSING,
            pending_op=op,
            pending_key=key,
            pending_amount=amount,
            pending_since_us=uow.clock.now_us(),
        )

    # -- driving the gateway -----------------------------------------------------------------

    async def drive(
        self,
        ctx: Context,
        intent_id: str,
        *,
        fresh: bool = False,
        intent: PaymentIntent | None = None,
    ) -> PaymentIntent:
        """Carry out whatever gateway operation the intent waits for, until it rests.

        ``fresh``: the operation was just started by this caller, so the gateway cannot know its
        key yet. Anyone else (a retry, the janitor) first asks the gateway what happened under
        the key, and re-sends only when it has no record: a gateway that forgets idempotency keys
        after a day (Stripe) must never see an old key re-sent for a charge it already made.
        ``intent``: the intent as the caller's own transaction on it just committed (instead of
        reading it again); every outcome is still applied under a compare-and-set.
        """
        if intent is None or intent.id != intent_id:
            intent = await self._load(intent_id)
        unreached = 0
        for _ in range(_MAX_STEPS + _UNREACHED_RETRIES):
            if intent.status is not IntentStatus.PROCESSING or intent.pending_op is None:
                return intent
            op, key = intent.pending_op, intent.pending_key
            rejected: GatewayError | None = None
            try:
                charge: Charge | None = await self._call(intent, look_first=not fresh)
            except GatewayRejected as exc:
                log.error("payments.gateway_rejected", intent=intent.id, op=op, code=exc.code)
                if op is PendingOp.AUTHORIZE:
                    charge, rejected = None, exc
                else:
                    charge = await self._settled_elsewhere(intent)
                    if charge is None:
                        return intent  # stays processing; the janitor retries, the log alerts
            except GatewayUnavailable as exc:
                if unreached < _UNREACHED_RETRIES:
                    # Never reached (connect failed, 503): nothing can have happened there, so
                    # try again at once, briefly, before answering 202 and leaving it to the
                    # janitor.
                    unreached += 1
                    await asyncio.sleep(_UNREACHED_DELAY_S * unreached)
                    continue
                log.warning("payments.gateway_pending", intent=intent.id, op=op, code=exc.code)
                return intent
            except GatewayError as exc:
                log.warning("payments.gateway_pending", intent=intent.id, op=op, code=exc.code)
                return intent  # outcome unknown: stays processing, never stored for replay
            fresh = False
            outcome = _Outcome(op, key, charge, rejected)
            intent = await self._transition(
                intent_id, functools.partial(self._apply_outcome, ctx, outcome)
            )
        return intent

    async def _settled_elsewhere(self, intent: PaymentIntent) -> Charge | None:
        """A capture or void the gateway refused may be moot: the charge may already be captured
        (a capture that answered too late), or declined or voided (a 3-D Secure challenge that
        failed or expired before the cancel). The charge, when it answers the operation."""
        key = intent.pending_key or ""
        with contextlib.suppress(GatewayError):
            charge = await self._gateway(intent.gateway).retrieve_by_idempotency_key(key)
            if charge is None:
                return None
            if intent.pending_op is PendingOp.CAPTURE and charge.status is ChargeStatus.CAPTURED:
                return charge
            if intent.pending_op is PendingOp.VOID and charge.status in {
                ChargeStatus.VOIDED,
                ChargeStatus.DECLINED,
            }:
                return charge
        return None

    async def _apply_outcome(
        self, ctx: Context, outcome: _Outcome, uow: UnitOfWork, current: PaymentIntent
    ) -> PaymentIntent | None:
        if current.pending_op is not outcome.op or current.pending_key != outcome.key:
            return None  # someone else applied this outcome first
        if current.status not in {IntentStatus.PROCESSING, IntentStatus.REQUIRES_ACTION}:
            return None
        if outcome.charge is None:
            return await self._declined(uow, ctx, current, None, outcome.rejected)
        return await self._apply(uow, ctx, current, outcome.op, outcome.charge)

    async def _call(self, intent: PaymentIntent, *, look_first: bool) -> Charge:
        gateway = self._gateway(intent.gateway)
        key = intent.pending_key
        if key is None:
            raise LedgerInvariantError(f"{intent.id}: processing without a gateway key")
        if intent.pending_op is PendingOp.AUTHORIZE:
            if look_first:
                known = await gateway.retrieve_by_idempotency_key(key)
                if known is not None:
                    return known
            method = intent.payment_method or ""
            source = VaultToken(method) if method.startswith("tok_") else GatewayToken(method)
            threshold = self.config.three_ds_above.get(intent.currency)
            return await gateway.authorize(
                AuthorizeRequest(
                    gateway_key=key,
                    amount=intent.amount,
                    currency=intent.currency,
                    source=source,
                    capture=False,
                    return_url=intent.return_url,
                    force_three_d_secure=threshold is not None and intent.amount >= threshold,
                    description=intent.description,
                    metadata={
                        "payment_intent": intent.id,
                        "on_behalf_of": intent.created_by_principal or "",
                    },
                )
            )
        if intent.pending_op is PendingOp.CAPTURE:
            return await gateway.capture(key, intent.pending_amount or intent.amount_capturable)
        return await gateway.void(key)

    async def refresh(self, ctx: Context, intent_id: str) -> PaymentIntent:
        """Ask the gateway about an intent waiting on the cardholder (3-D Secure)."""
        intent = await self._load(intent_id)
        if intent.status is not IntentStatus.REQUIRES_ACTION or intent.pending_key is None:
            return intent
        charge = await self._gateway(intent.gateway).retrieve_by_idempotency_key(intent.pending_key)
        if charge is None or charge.status is ChargeStatus.REQUIRES_ACTION:
            return intent
        key = intent.pending_key

        async def apply(uow: UnitOfWork, current: PaymentIntent) -> PaymentIntent | None:
            if current.status is not IntentStatus.REQUIRES_ACTION or current.pending_key != key:
                return None
            return await self._apply(uow, ctx, current, PendingOp.AUTHORIZE, charge)

        await self._transition(intent_id, apply)
        return await self.drive(ctx, intent_id)

    async def resolve(self, ctx: Context, intent_id: str) -> PaymentIntent:
        """The janitor's (and a retry's) way in: finish whatever the intent is waiting for."""
        intent = await self._load(intent_id)
        if intent.status is IntentStatus.REQUIRES_ACTION:
            return await self.refresh(ctx, intent_id)
        return await self.drive(ctx, intent_id)

    # -- applying gateway outcomes (inside a transaction) -------------------------------------

    async def _apply(
        self, uow: UnitOfWork, ctx: Context, intent: PaymentIntent, op: PendingOp, charge: Charge
    ) -> PaymentIntent:
        if op is PendingOp.AUTHORIZE:
            return await self._authorized(uow, ctx, intent, charge)
        if op is PendingOp.CAPTURE:
            return await self._captured(uow, ctx, intent, charge)
        return await self._voided(uow, ctx, intent, charge)

    async def _authorized(
        self, uow: UnitOfWork, ctx: Context, intent: PaymentIntent, charge: Charge
    ) -> PaymentIntent:
        if charge.status is ChargeStatus.REQUIRES_ACTION:
            waiting = replace(
                intent,
                status=IntentStatus.REQUIRES_ACTION,
                next_action_url=charge.next_action_url,
                charge_id=charge.charge_id,
                **self._card(charge),
            )
            await self._audit(uow, ctx, waiting, "payments.intent.requires_action")
            await self._webhook(uow, "payment_intent.requires_action", waiting)
            return waiting
        if charge.status in {ChargeStatus.DECLINED, ChargeStatus.VOIDED}:
            return await self._declined(uow, ctx, intent, charge, None)
        if charge.status not in {ChargeStatus.AUTHORIZED, ChargeStatus.CAPTURED}:
            raise LedgerInvariantError(f"{intent.id}: unexpected charge status {charge.status}")
        now = uow.clock.now_us()
        key = intent.pending_key
        held = replace(
            intent,
            authorize_key=key,
            charge_id=charge.charge_id,
            amount_capturable=charge.amount,
            next_action_url=None,
            pending_op=None,
            pending_amount=None,
            pending_since_us=None,
            **self._card(charge),
        )
        brand = held.card_brand
        days = authorization_days(brand, dict(self.config.authorization_days))
        held = replace(held, authorization_expires_us=now + days * _DAY_US)
        results = await ledger.post(
            uow,
            [
                TransferInput(
                    id=held.hold_id,
                    debit_account_id=self._gateway_account(held),
                    credit_account_id=held.destination_account,
                    amount=charge.amount,
                    currency=held.currency,
                    code="payment.authorize",
                    flags=TransferFlag.PENDING,
                )
            ],
            ensure=self._accounts(held),  # one read for both
        )
        _ensure_ledger(results, f"the authorization of {held.id}")
        await self._audit(uow, ctx, held, "payments.intent.authorized")
        if charge.status is ChargeStatus.CAPTURED:
            return await self._captured(uow, ctx, held, charge)
        need = None
        if held.purpose is not Purpose.DEPOSIT:
            need = await self.risk.for_payment(uow, held, charge)
        if need is not None:
            return (await self._open_review(uow, ctx, held, need, refund_id=None))[0]
        if held.capture_method is CaptureMethod.AUTOMATIC:
            return self._begin(uow, held, *_capture_all(held))
        return replace(held, status=IntentStatus.REQUIRES_CAPTURE)

    async def _declined(
        self,
        uow: UnitOfWork,
        ctx: Context,
        intent: PaymentIntent,
        charge: Charge | None,
        rejected: GatewayError | None,
    ) -> PaymentIntent:
        if charge is not None:
            code = charge.error_code or "card_declined"
            message = charge.message or "The card was declined."
            decline = charge.decline_code
        else:
            code = "payment_method_invalid"
            message = (rejected.message if rejected else None) or "The gateway refused the card."
            decline = None
        failed = replace(
            intent,
            status=IntentStatus.REQUIRES_PAYMENT_METHOD,
            pending_op=None,
            pending_key=None,
            pending_amount=None,
            pending_since_us=None,
            next_action_url=None,
            last_error_code=code[:64],
            last_error_message=message[:500],
            last_decline_code=decline[:64] if decline else None,
            **(self._card(charge) if charge is not None else {}),
        )
        await self._audit(
            uow, ctx, failed, "payments.intent.declined", outcome=Outcome.FAILURE, code=code
        )
        await self._webhook(uow, "payment_intent.payment_failed", failed)
        return failed

    async def _captured(
        self, uow: UnitOfWork, ctx: Context, intent: PaymentIntent, charge: Charge
    ) -> PaymentIntent:
        if charge.status is not ChargeStatus.CAPTURED:
            raise LedgerInvariantError(
                f"{intent.id}: capture answered {charge.status.value}, not captured"
            )
        captured = charge.amount_captured
        results = await ledger.post(
            uow,
            [
                TransferInput(
                    id=f"{intent.id}:capture:{intent.authorize_key}",
                    debit_account_id=None,
                    credit_account_id=None,
                    amount=captured,
                    currency=None,
                    code=None,
                    flags=TransferFlag.POST_PENDING,
                    pending_id=intent.hold_id,
                )
            ],
        )
        _ensure_ledger(results, f"the capture of {intent.id}")
        done = replace(
            intent,
            status=IntentStatus.SUCCEEDED,
            amount_received=captured,
            amount_capturable=0,
            pending_op=None,
            pending_amount=None,
            pending_since_us=None,
        )
        await self._audit(uow, ctx, done, "payments.intent.captured")
        await self._webhook(uow, "payment_intent.succeeded", done)
        return done

    async def _voided(
        self, uow: UnitOfWork, ctx: Context, intent: PaymentIntent, charge: Charge
    ) -> PaymentIntent:
        if charge.status is ChargeStatus.CAPTURED:
            raise LedgerInvariantError(f"{intent.id}: void answered captured")
        if intent.authorize_key is not None:
            results = await ledger.post(
                uow,
                [
                    TransferInput(
                        id=f"{intent.id}:void:{intent.authorize_key}",
                        debit_account_id=None,
                        credit_account_id=None,
                        amount=None,
                        currency=None,
                        code=None,
                        flags=TransferFlag.VOID_PENDING,
                        pending_id=intent.hold_id,
                    )
                ],
            )
            _ensure_ledger(results, f"the void of {intent.id}")
        canceled = replace(
            intent,
            status=IntentStatus.CANCELED,
            amount_capturable=0,
            pending_op=None,
            pending_amount=None,
            pending_since_us=None,
            next_action_url=None,
        )
        await self._audit(uow, ctx, canceled, "payments.intent.canceled")
        await self._webhook(uow, "payment_intent.canceled", canceled)
        return canceled

    # -- reviews -----------------------------------------------------------------------------

    async def _open_review(
        self,
        uow: UnitOfWork,
        ctx: Context,
        intent: PaymentIntent,
        need: ReviewNeed,
        *,
        refund_id: str | None,
    ) -> tuple[PaymentIntent, Review]:
        await self._flush_along(uow)  # what the transition wrote so far goes first
        now = uow.clock.now_us()
        expires = (intent.authorization_expires_us or now + 5 * _DAY_US) - (
            self.config.review_margin_s * 1_000_000
        )
        review = Review(
            id=_fresh_id("rev", now),
            payment_intent=intent.id,
            refund_id=refund_id,
            status=ReviewStatus.OPEN,
            approvals_required=need.approvals_required,
            approvals=(),
            score=need.score,
            reasons=need.reasons,
            expires_us=max(expires, now + 60_000_000),
            created_by_principal=intent.created_by_principal,
            decided_by=None,
            note=None,
            created_us=now,
            decided_us=None,
        )
        await review_storage.insert_review(uow, review)
        await audit.record(
            uow,
            ctx.event(
                "risk.review.open",
                resource_type="review",
                resource_id=review.id,
                ts_us=now,
                details={
                    "payment_intent": intent.id,
                    "refund": refund_id,
                    "approvals_required": review.approvals_required,
                    "score": review.score,
                    "reasons": [str(r.get("code")) for r in review.reasons][:16],
                },
            ),
        )
        await webhooks.enqueue(uow, "review.opened", review_json(review), ts_us=now)
        if refund_id is not None:
            return intent, review
        return replace(intent, status=IntentStatus.REQUIRES_REVIEW, review_id=review.id), review

    async def _close_review(self, uow: UnitOfWork, review_id: str, note: str) -> None:
        found = await review_storage.get_review(uow, review_id, for_update=True)
        if found is None or found[0].status is not ReviewStatus.OPEN:
            return
        review, version = found
        closed = review_rules.expire(review, uow.clock.now_us())
        closed = replace(closed, note=note)
        await review_storage.save_review(uow, review, closed, version)

    async def list_reviews(
        self, *, status: ReviewStatus | None, after_id: str | None, limit: int
    ) -> list[Review]:
        async with self.db.read() as uow:
            return await review_storage.list_reviews(
                uow, status=status, after_id=after_id, limit=limit
            )

    async def get_review(self, review_id: str) -> Review:
        async with self.db.read() as uow:
            found = await review_storage.get_review(uow, review_id)
        if found is None:
            raise ReviewNotFound(f"no review {review_id!r}")
        return found[0]

    async def decide_review(
        self, ctx: Context, review_id: str, *, approve: bool, note: str | None
    ) -> Review:
        """Approve or reject; once decided, the payment (or refund) moves on by itself."""
        reviewer = ctx.actor.principal_id or ctx.actor.key_id or "unknown"
        async with self.db.transaction() as uow:
            found = await self._lock_review(uow, review_id)
            if found is None:
                raise ReviewNotFound(f"no review {review_id!r}")
            review, version = found
            now = uow.clock.now_us()
            if approve:
                decided = review_rules.approve(review, reviewer, now, note)
            else:
                decided = review_rules.reject(review, reviewer, now, note)
            if not await review_storage.save_review(uow, review, decided, version):
                raise LedgerInvariantError(f"review {review_id} changed under its row lock")
            await audit.record(
                uow,
                ctx.event(
                    "risk.review.approve" if approve else "risk.review.reject",
                    resource_type="review",
                    resource_id=review.id,
                    ts_us=now,
                    details={
                        "payment_intent": review.payment_intent,
                        "refund": review.refund_id,
                        "approvals": len(decided.approvals),
                        "approvals_required": decided.approvals_required,
                        "status": decided.status.value,
                    },
                ),
            )
            if decided.status is not ReviewStatus.OPEN:
                await webhooks.enqueue(uow, "review.decided", review_json(decided), ts_us=now)
                await self._after_decision(uow, decided)
        if decided.status is not ReviewStatus.OPEN:
            if decided.refund_id is not None:
                await self.drive_refund(ctx, decided.refund_id)
            else:
                await self.drive(ctx, decided.payment_intent)
        return decided

    async def _lock_review(self, uow: UnitOfWork, review_id: str) -> tuple[Review, int] | None:
        """Lock in the one order every path uses — the payment intent, then its review (then a
        refund) — so a cancel and a decision never deadlock on PostgreSQL."""
        peek = await review_storage.get_review(uow, review_id)
        if peek is None:
            return None
        await storage.get_intent(uow, peek[0].payment_intent, for_update=True)
        return await review_storage.get_review(uow, review_id, for_update=True)

    async def _after_decision(self, uow: UnitOfWork, review: Review) -> None:
        """In the decision's transaction: move the payment or refund out of review."""
        if review.refund_id is not None:
            found = await storage.get_refund(uow, review.refund_id, for_update=True)
            if found is None:
                return
            refund, row = found
            approved = review.status is ReviewStatus.APPROVED
            await storage.update_refund(
                uow,
                refund.id,
                row["version"],
                status=(RefundStatus.PENDING if approved else RefundStatus.CANCELED).value,
                pending_since_us=uow.clock.now_us() if approved else None,
                updated_us=uow.clock.now_us(),
            )
            return
        intent = await storage.get_intent(uow, review.payment_intent, for_update=True)
        if intent is None or intent.status is not IntentStatus.REQUIRES_REVIEW:
            return
        if review.status is ReviewStatus.APPROVED:
            if intent.capture_method is CaptureMethod.AUTOMATIC:
                moved = self._begin(uow, intent, *_capture_all(intent))
            else:
                moved = replace(intent, status=IntentStatus.REQUIRES_CAPTURE)
        else:
            moved = replace(
                self._begin(uow, intent, PendingOp.VOID, None), canceled_reason="review_rejected"
            )
        await self._save(uow, intent, moved)

    # -- refunds -----------------------------------------------------------------------------

    async def refund(
        self,
        ctx: Context,
        new: NewRefund,
        *,
        idempotency_key: str | None,
        scope: str | None = None,
    ) -> Refund:
        key_id = scope or ctx.actor.key_id
        for attempt in range(2):
            try:
                async with self.db.transaction() as uow:
                    existing = None
                    if key_id is not None and idempotency_key is not None:
                        existing = await storage.find_refund_by_request(
                            uow, key_id, idempotency_key
                        )
                    if existing is None:
                        refund_id = await self._insert_refund(
                            uow, ctx, new, key_id, idempotency_key
                        )
                break
            except IntegrityError:
                if attempt:  # a concurrent twin won the unique pair: the lookup finds it now
                    raise
        if existing is not None:
            return await self.drive_refund(ctx, existing.id)
        return await self.drive_refund(ctx, refund_id)

    async def _insert_refund(
        self,
        uow: UnitOfWork,
        ctx: Context,
        new: NewRefund,
        key_id: str | None,
        idempotency_key: str | None,
    ) -> str:
        intent = await storage.get_intent(uow, new.payment_intent, for_update=True)
        if intent is None:
            raise IntentNotFound(f"no payment intent {new.payment_intent!r}")
        if intent.status is not IntentStatus.SUCCEEDED:
            raise InvalidTransition(
                f"payment intent {intent.id} is {intent.status.value}; only a succeeded payment "
                "can be refunded (cancel it instead)"
            )
        left = intent.amount_received - await storage.refunds_reserved(uow, intent.id)
        if left <= 0:
            raise AlreadyRefunded(f"payment intent {intent.id} has nothing left to refund")
        amount = left if new.amount is None else new.amount
        if amount > left:
            raise AmountTooLarge(
                f"refund of {amount} is more than the {left} left to refund", refundable=left
            )
        now = uow.clock.now_us()
        refund_id = _fresh_id("re", now)
        need = await self.risk.for_refund(uow, intent, amount)
        await storage.insert_refund(
            uow,
            {
                "id": refund_id,
                "payment_intent": intent.id,
                "amount": amount,
                "currency": intent.currency,
                "reason": new.reason.value,
                "status": (RefundStatus.REQUIRES_REVIEW if need else RefundStatus.PENDING).value,
                "refund_key": f"{refund_id}.refund",
                "source_account": new.source_account or intent.destination_account,
                "gateway_refund_id": None,
                "review_id": None,
                "failure_code": None,
                "created_by_key_id": key_id,
                "created_by_principal": ctx.actor.principal_id,
                "idempotency_key": idempotency_key,
                "pending_since_us": None if need else now,
                "created_us": now,
                "updated_us": now,
                "version": 0,
            },
        )
        await audit.record(
            uow,
            ctx.event(
                "payments.refund.create",
                resource_type="refund",
                resource_id=refund_id,
                ts_us=now,
                details={
                    "payment_intent": intent.id,
                    "amount": amount,
                    "currency": intent.currency,
                    "reason": new.reason.value,
                    "review": need is not None,
                },
            ),
        )
        if need is not None:
            review_intent = replace(intent, created_by_principal=ctx.actor.principal_id)
            _, review = await self._open_review(uow, ctx, review_intent, need, refund_id=refund_id)
            found = await storage.get_refund(uow, refund_id)
            if found is not None:
                await storage.update_refund(
                    uow, refund_id, found[1]["version"], review_id=review.id
                )
        return refund_id

    async def get_refund(self, refund_id: str) -> Refund:
        async with self.db.read() as uow:
            found = await storage.get_refund(uow, refund_id)
        if found is None:
            raise RefundNotFound(f"no refund {refund_id!r}")
        return found[0]

    async def drive_refund(self, ctx: Context, refund_id: str) -> Refund:
        refund = await self.get_refund(refund_id)
        if refund.status is not RefundStatus.PENDING:
            return refund
        intent, _ = await self.get(refund.payment_intent)
        if intent.authorize_key is None:
            raise LedgerInvariantError(f"{intent.id}: refund of a payment never authorized")
        try:
            result = await self._gateway(intent.gateway).refund(
                intent.authorize_key, refund.refund_key, refund.amount
            )
        except GatewayRejected as exc:
            return await self._finish_refund(ctx, refund_id, None, exc.code)
        except GatewayError as exc:
            log.warning("payments.refund_pending", refund=refund_id, code=exc.code)
            return refund
        if result.status in {"pending", "processing"}:
            return refund  # the gateway is still on it: the janitor asks again, same key
        if result.status != "succeeded":
            return await self._finish_refund(ctx, refund_id, None, "refund_failed")
        return await self._finish_refund(ctx, refund_id, result.refund_id, None)

    async def _finish_refund(
        self, ctx: Context, refund_id: str, gateway_refund_id: str | None, failure: str | None
    ) -> Refund:
        async with self.db.transaction() as uow:
            found = await storage.get_refund(uow, refund_id, for_update=True)
            if found is None:
                raise RefundNotFound(f"no refund {refund_id!r}")
            refund, row = found
            if refund.status is not RefundStatus.PENDING:
                return refund
            now = uow.clock.now_us()
            if failure is None:
                intent = await storage.get_intent(uow, refund.payment_intent, for_update=True)
                if intent is None:
                    raise LedgerInvariantError(f"refund {refund_id} lost its payment intent")
                results = await ledger.post(
                    uow,
                    [
                        TransferInput(
                            id=f"{refund.id}:refund",
                            debit_account_id=row["source_account"],
                            credit_account_id=self._gateway_account(intent),
                            amount=refund.amount,
                            currency=refund.currency,
                            code="payment.refund",
                        )
                    ],
                )
                _ensure_ledger(results, f"refund {refund.id}")
                await self._save(
                    uow,
                    intent,
                    replace(intent, amount_refunded=intent.amount_refunded + refund.amount),
                )
            status = RefundStatus.SUCCEEDED if failure is None else RefundStatus.FAILED
            await storage.update_refund(
                uow,
                refund.id,
                row["version"],
                status=status.value,
                gateway_refund_id=gateway_refund_id,
                failure_code=failure,
                pending_since_us=None,
                updated_us=now,
            )
            done = replace(
                refund,
                status=status,
                gateway_refund_id=gateway_refund_id,
                failure_code=failure,
                updated_us=now,
            )
            await audit.record(
                uow,
                ctx.event(
                    "payments.refund.succeeded" if failure is None else "payments.refund.failed",
                    resource_type="refund",
                    resource_id=refund.id,
                    ts_us=now,
                    outcome=Outcome.SUCCESS if failure is None else Outcome.FAILURE,
                    outcome_code=failure,
                    details={"payment_intent": refund.payment_intent, "amount": refund.amount},
                ),
            )
            if failure is None:
                await webhooks.enqueue(uow, "refund.created", refund_json(done), ts_us=now)
            return done

    # -- inbound gateway webhooks -----------------------------------------------------------

    async def gateway_webhook(
        self, ctx: Context, gateway_name: str, headers: Mapping[str, str], body: bytes
    ) -> bool:
        """Verify, deduplicate, then re-fetch: the event only says *look again*; the gateway's
        current record decides, and outcomes only ever move an intent forward. A chargeback
        (``charge.dispute.created``) is booked instead (:meth:`chargeback`)."""
        event = self._gateway(gateway_name).parse_webhook(headers, body)
        if event.type == DISPUTE_CREATED:
            return await self.chargeback(ctx, gateway_name, event)
        async with self.db.transaction() as uow:
            first = await storage.record_gateway_event(
                uow, gateway_name, event.event_id, event.type[:64], uow.clock.now_us()
            )
            intent_id = None
            if first and event.gateway_key:
                intent_id = event.gateway_key.split(".", 1)[0]
        if intent_id is not None:
            try:
                await self.resolve(ctx, intent_id)
            except IntentNotFound:
                log.info("payments.webhook_unknown_intent", gateway=gateway_name)
        return first

    async def chargeback(self, ctx: Context, gateway_name: str, event: WebhookEvent) -> bool:
        """Book a chargeback, once per dispute: ``platform:chargebacks:{CUR} → gateway:{name}:
        {CUR}`` for the disputed amount, its audit event and the owning domain's reaction
        (:data:`ChargebackHook`), in one transaction. False for a dispute already booked."""
        dispute, amount = event.dispute_id, event.amount
        if not event.gateway_key or dispute is None or amount is None:
            raise GatewayRejected("a dispute event names its charge, id and amount")
        if not 0 < len(dispute) <= _DISPUTE_ID_MAX or not dispute.isprintable():
            raise GatewayRejected(f"a dispute id is 1..{_DISPUTE_ID_MAX} printable characters")
        if not 0 < amount <= _MAX_SAFE_AMOUNT:
            raise GatewayRejected("a dispute's amount is a positive integer in minor units")
        intent_id = event.gateway_key.split(".", 1)[0]
        async with self.db.transaction() as uow:
            await storage.record_gateway_event(
                uow, gateway_name, event.event_id, event.type[:64], uow.clock.now_us()
            )
            # The intent's row is locked (before any domain row or ledger account): a domain
            # reading its chargebacks (:func:`charged_back`, escrow opening an order for a
            # deposit) waits for this booking or is seen by its hook, never neither.
            intent = await storage.get_intent(uow, intent_id, for_update=True)
            if intent is None or intent.gateway != gateway_name:
                log.info("payments.chargeback_unknown_intent", gateway=gateway_name)
                return False
            booked = Chargeback(intent.id, gateway_name, dispute, amount, intent.currency)
            return await self._book_chargeback(uow, ctx, booked)

    async def _book_chargeback(self, uow: UnitOfWork, ctx: Context, booked: Chargeback) -> bool:
        """The owning domain's hook around the ledger booking (its row locks first), else the
        booking alone."""
        hook = self.on_chargeback
        if hook is None:
            return await self._post_chargeback(uow, ctx, booked)
        answers: list[bool] = []

        async def book() -> bool:
            if answers:
                raise LedgerInvariantError(f"chargeback {booked.dispute_id} booked twice")
            answers.append(await self._post_chargeback(uow, ctx, booked))
            return answers[0]

        await hook(uow, ctx, booked, book)
        if not answers:
            raise LedgerInvariantError(f"the chargeback hook never booked {booked.dispute_id}")
        return answers[0]

    async def _post_chargeback(self, uow: UnitOfWork, ctx: Context, booked: Chargeback) -> bool:
        contra = f"platform:chargebacks:{booked.currency}"
        gateway = f"gateway:{booked.gateway}:{booked.currency}"
        accounts = [
            AccountInput(contra, booked.currency, "platform", AccountFlag(0), "{}"),
            AccountInput(gateway, booked.currency, "gateway", AccountFlag(0), "{}"),
        ]
        created = await ledger.create_accounts(uow, None, accounts, public=False)
        _ensure_ledger([r.result for r in created], "chargeback accounts")
        results = await ledger.post(
            uow,
            [
                TransferInput(
                    id=f"{booked.payment_intent}:chargeback.{booked.dispute_id}",
                    debit_account_id=contra,
                    credit_account_id=gateway,
                    amount=booked.amount,
                    currency=booked.currency,
                    code=_CHARGEBACK_CODE,
                )
            ],
        )
        if results and results[0].startswith("exists_with_different"):
            # The gateway re-sent the dispute with other terms (say, another amount): the first
            # booking stands, the change is recorded as a failure for an operator to reconcile,
            # and the event is acknowledged (a 5xx would have the gateway re-send it for days).
            log.warning("payments.chargeback_changed", dispute_len=len(booked.dispute_id))
            await audit.record(
                uow,
                ctx.event(
                    "payments.chargeback",
                    resource_type="payment_intent",
                    resource_id=booked.payment_intent,
                    ts_us=uow.clock.now_us(),
                    outcome=Outcome.FAILURE,
                    outcome_code=results[0],
                    details={"dispute": booked.dispute_id, "amount": booked.amount},
                ),
            )
            return False
        _ensure_ledger(results, f"chargeback {booked.dispute_id}")
        if results == ["exists"]:
            return False  # booked before (a redelivered or replayed event)
        now = uow.clock.now_us()
        await audit.record(
            uow,
            ctx.event(
                "payments.chargeback",
                resource_type="payment_intent",
                resource_id=booked.payment_intent,
                ts_us=now,
                details={
                    "dispute": booked.dispute_id,
                    "amount": booked.amount,
                    "currency": booked.currency,
                    "gateway": booked.gateway,
                },
            ),
        )
        return True

    # -- janitor -------------------------------------------------------------------------------

    async def janitor_pass(self, ctx: Context) -> dict[str, int]:
        """One sweep: finish stuck operations, poll 3-D Secure, expire reviews and holds."""
        counts = {
            "resolved": 0,
            "challenges": 0,
            "reviews_expired": 0,
            "expired": 0,
            "refunds": 0,
            "errors": 0,
        }
        now = self.db.clock.now_us()
        grace_us = int(self.config.janitor_grace_s * 1_000_000)
        # Each queue is read round-robin (db.queues): items that stay put — a void the gateway
        # keeps refusing, a challenge nobody takes — never fill every pass's page.
        at, read, batch = self._cursors.at, self._cursors.read, _JANITOR_BATCH
        async with self.db.read() as uow:
            stuck = await storage.intents_in(
                uow,
                {IntentStatus.PROCESSING},
                updated_before_us=now - grace_us,
                limit=batch,
                after=at("stuck"),
            )
            read("stuck", [(i.updated_us, i.id) for i in stuck], batch, now=now)
            waiting = await storage.intents_in(
                uow,
                {IntentStatus.REQUIRES_ACTION},
                updated_before_us=now,
                limit=batch,
                after=at("waiting"),
            )
            read("waiting", [(i.updated_us, i.id) for i in waiting], batch, now=now)
            due = await review_storage.due_reviews(
                uow, now_us=now, limit=batch, after=at("reviews")
            )
            read("reviews", due, batch)
            due_reviews = [review_id for _, review_id in due]
            lapsing = await storage.authorizations_expiring(
                uow, before_us=now, limit=batch, after=at("lapsing")
            )
            read("lapsing", [(i.authorization_expires_us, i.id) for i in lapsing], batch)
            pending = await storage.pending_refunds(
                uow, before_us=now - grace_us, limit=batch, after=at("refunds")
            )
            read("refunds", pending, batch)
            refunds = [refund_id for _, refund_id in pending]
        # One item's trouble (a bug, a gateway answer nobody foresaw) must not stop the
        # janitor for every other payment: it is logged with the item, counted, and retried on
        # the next pass; the rest go on.
        for intent in stuck:
            after = await self._isolated(counts, intent.id, self.drive(ctx, intent.id))
            counts["resolved"] += after is not None and after.status is not IntentStatus.PROCESSING
        for intent in waiting:
            after = await self._isolated(counts, intent.id, self.refresh(ctx, intent.id))
            counts["challenges"] += (
                after is not None and after.status is not IntentStatus.REQUIRES_ACTION
            )
        for review_id in due_reviews:
            expired = await self._isolated(counts, review_id, self._expire_review(ctx, review_id))
            counts["reviews_expired"] += expired or 0
        for intent in lapsing:
            await self._isolated(counts, intent.id, self._expire_authorization(ctx, intent.id))
            counts["expired"] += 1
        for refund_id in refunds:
            done = await self._isolated(counts, refund_id, self.drive_refund(ctx, refund_id))
            counts["refunds"] += done is not None and done.status is not RefundStatus.PENDING
        return counts

    @staticmethod
    async def _isolated(counts: dict[str, int], item: str, work: Awaitable[T]) -> T | None:
        try:
            return await work
        except Exception:
            counts["errors"] += 1
            log.exception("payments.janitor_item_failed", item=item)
            return None

    async def _expire_review(self, ctx: Context, review_id: str) -> int:
        async with self.db.transaction() as uow:
            found = await self._lock_review(uow, review_id)
            if found is None or found[0].status is not ReviewStatus.OPEN:
                return 0
            review, version = found
            now = uow.clock.now_us()
            expired = review_rules.expire(review, now)
            await review_storage.save_review(uow, review, expired, version)
            await audit.record(
                uow,
                ctx.event(
                    "risk.review.expire",
                    resource_type="review",
                    resource_id=review.id,
                    ts_us=now,
                    details={"payment_intent": review.payment_intent},
                ),
            )
            await webhooks.enqueue(uow, "review.decided", review_json(expired), ts_us=now)
            await self._after_decision(uow, expired)
        if expired.refund_id is None:
            await self.drive(ctx, expired.payment_intent)
        return 1

    async def _expire_authorization(self, ctx: Context, intent_id: str) -> None:
        async def start(uow: UnitOfWork, intent: PaymentIntent) -> PaymentIntent | None:
            if intent.status is not IntentStatus.REQUIRES_CAPTURE:
                return None
            return replace(
                self._begin(uow, intent, PendingOp.VOID, None),
                canceled_reason="authorization_expired",
            )

        await self._transition(intent_id, start)
        await self.drive(ctx, intent_id)

    # -- plumbing -------------------------------------------------------------------------------

    async def _load(self, intent_id: str) -> PaymentIntent:
        async with self.db.read() as uow:
            intent = await storage.get_intent(uow, intent_id)
        if intent is None:
            raise IntentNotFound(f"no payment intent {intent_id!r}")
        return intent

    async def _transition(
        self,
        intent_id: str,
        decide: Callable[[UnitOfWork, PaymentIntent], Awaitable[PaymentIntent | None]],
    ) -> PaymentIntent:
        async with self.db.transaction() as uow:
            intent = await storage.get_intent(uow, intent_id, for_update=True)
            if intent is None:
                raise IntentNotFound(f"no payment intent {intent_id!r}")
            if uow.is_postgres:
                self._along[id(uow)] = []
            try:
                new = await decide(uow, intent)
                if new is None:
                    await self._flush_along(uow)
                    return intent
                return await self._save(uow, intent, new)
            finally:
                self._along.pop(id(uow), None)

    async def _save(
        self, uow: UnitOfWork, before: PaymentIntent, after: PaymentIntent
    ) -> PaymentIntent:
        saved = replace(after, version=before.version + 1, updated_us=uow.clock.now_us())
        along = self._along.get(id(uow))
        if along:  # the transition's audit event and webhook ride along the UPDATE
            done = await storage.save_intent_with(
                uow, saved, expected_version=before.version, along=list(along)
            )
            along.clear()
        else:
            done = await storage.save_intent(uow, saved, expected_version=before.version)
        if not done:
            raise LedgerInvariantError(f"payment intent {before.id} changed under its row lock")
        return saved

    async def _hold_back(self, uow: UnitOfWork, write: tuple[Any, dict[str, Any]]) -> bool:
        """Keep ``write`` (an audit or webhook INSERT) for the transition's UPDATE; False when
        there is no transition to ride along (it is to be written now). One of each kind per
        statement (their parameters are named per kind): a second one writes the first now."""
        along = self._along.get(id(uow))
        if along is None:
            return False
        if any(statement is write[0] for statement, _ in along):
            await self._flush_along(uow)
        along.append(write)
        return True

    async def _flush_along(self, uow: UnitOfWork) -> None:
        """Write what :meth:`_hold_back` kept, in order: before anything else writes an audit
        event or webhook in the transaction (they keep the order they were made in)."""
        along = self._along.get(id(uow))
        while along:
            statement, params = along.pop(0)
            await uow.conn.execute(statement, params)

    def _gateway_account(self, intent: PaymentIntent) -> str:
        return f"gateway:{intent.gateway}:{intent.currency}"

    def _accounts(self, intent: PaymentIntent) -> ledger.Ensure:
        """The accounts an authorization posts on, created first where missing."""
        wanted = [
            AccountInput(
                self._gateway_account(intent), intent.currency, "gateway", AccountFlag(0), "{}"
            )
        ]
        if intent.destination_account.startswith("platform:unallocated:"):
            wanted.append(
                AccountInput(
                    intent.destination_account, intent.currency, "platform", AccountFlag(0), "{}"
                )
            )
        return ledger.Ensure(wanted, "payments accounts")

    @staticmethod
    def _card(charge: Charge) -> dict[str, Any]:
        card = charge.card
        if card is None:
            return {}
        return {
            "card_brand": (card.brand or "")[:32] or None,
            "card_last4": card.last4 if card.last4 and len(card.last4) == 4 else None,
            "card_fingerprint": (card.fingerprint or "")[:64] or None,
            "card_country": country_alpha2(card.country),
        }

    async def _audit(
        self,
        uow: UnitOfWork,
        ctx: Context,
        intent: PaymentIntent,
        action: str,
        *,
        outcome: Outcome = Outcome.SUCCESS,
        code: str | None = None,
    ) -> None:
        event = self._audit_event(uow, ctx, intent, action, outcome=outcome, code=code)
        if not await self._hold_back(uow, audit.outbox_insert(event)):
            await audit.record(uow, event)

    @staticmethod
    def _audit_event(
        uow: UnitOfWork,
        ctx: Context,
        intent: PaymentIntent,
        action: str,
        *,
        outcome: Outcome = Outcome.SUCCESS,
        code: str | None = None,
    ) -> AuditEvent:
        return ctx.event(
            action,
            resource_type="payment_intent",
            resource_id=intent.id,
            ts_us=uow.clock.now_us(),
            outcome=outcome,
            outcome_code=code,
            details={
                "status": intent.status.value,
                "amount": intent.amount,
                "currency": intent.currency,
                "gateway": intent.gateway,
                "gateway_key": intent.pending_key or intent.authorize_key,
                "amount_received": intent.amount_received,
            },
        )

    async def _webhook(self, uow: UnitOfWork, event_type: str, intent: PaymentIntent) -> None:
        review = await self._review_of(uow, intent)
        data, now = intent_json(intent, review), uow.clock.now_us()
        if self._along.get(id(uow)) is None:
            await webhooks.enqueue(uow, event_type, data, ts_us=now)
            return
        await self._hold_back(uow, webhooks.event_insert(event_type, data, ts_us=now))


@dataclass(frozen=True, slots=True)
class _Outcome:
    op: PendingOp
    key: str | None
    charge: Charge | None
    rejected: GatewayError | None


def _capture_all(intent: PaymentIntent) -> tuple[PendingOp, int]:
    return PendingOp.CAPTURE, intent.amount_capturable
