"""``SandboxGateway``: a simulated bank, inside the vault, that keeps its own books.

It implements :class:`~hammerlock.payments.gateways.base.Gateway` against a SQLite file under
the data dir (:mod:`.store`; rows and their transitions are values in :mod:`.model`), decides
like a bank from Stripe's test cards (:mod:`.cards`), serves 3-D Secure challenges
(:mod:`.challenge` is the HTTP side), sends signed webhooks (:mod:`.webhooks`), writes daily
settlement files (:mod:`.settlement`) and misbehaves on request (:mod:`.faults`).

Idempotency: one charge per ``gateway_key``, whatever crashes: the charge row is committed
(synchronous=FULL) before anything is answered, the same key answers the first charge, and the
same key with a different amount, currency, capture flag or card is ``GatewayRejected``
(``idempotency_mismatch``). Refunds and payouts are idempotent by their own keys.

``GatewayRejected`` codes: ``unsupported_source`` (not a ``CardData``), ``invalid_card``
(Luhn/brand), ``invalid_request`` (amount, currency, key, URL, cursor), ``idempotency_mismatch``,
``charge_not_found``, ``invalid_state`` (e.g. capture of a voided charge),
``amount_exceeds_captured`` (refund), ``escrow_not_supported``, ``invalid_signature`` (webhook).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, ParamSpec, TypeVar

import httpx
import orjson

from hammerlock.clock import Clock, from_us
from hammerlock.money import MAX_API_AMOUNT, MoneyError, get_currency
from hammerlock.payments.gateways.base import (
    DISPUTE_CREATED,
    AuthorizeRequest,
    CardData,
    CardSummary,
    Charge,
    ChargeStatus,
    GatewayUnavailable,
    Payout,
    PayoutRequest,
    Refund,
    WebhookEvent,
)
from hammerlock.payments.gateways.signature import SIGNATURE_HEADER, verify_header
from hammerlock.secret_files import create_once
from hammerlock.security.pan import card_brand, contains_pan
from hammerlock.vault.sandbox import settlement, store
from hammerlock.vault.sandbox.cards import Decision, Outcome, decide, is_valid_number
from hammerlock.vault.sandbox.errors import ChallengeClosed, ChallengeExpired, ChallengeNotFound
from hammerlock.vault.sandbox.faults import FaultName, FaultPlan, Faults, parse_faults
from hammerlock.vault.sandbox.model import (
    AUTH_FAILED,
    EVENT_TYPES,
    ChargeRow,
    PayoutRow,
    RefundRow,
    approved,
    captured,
    challenge_expired,
    charge_json,
    declined,
    listing_json,
    reject,
    voided,
)
from hammerlock.vault.sandbox.webhooks import WebhookSender

if TYPE_CHECKING:
    import random

    from hammerlock.settings import Settings

__all__ = [
    "CRASH_EXIT_CODE",
    "NAME",
    "ChallengeResult",
    "ChallengeView",
    "SandboxGateway",
    "verify_webhook",
]

NAME: Final = "sandbox"
CRASH_EXIT_CODE: Final = 70  # EX_SOFTWARE: what a crash_after_charge fault exits with
KEY_LEN_MAX: Final = 255
URL_LEN_MAX: Final = 2_048
TEXT_LEN_MAX: Final = 500
LIST_LIMIT_MAX: Final = 1_000
WEBHOOK_BODY_MAX: Final = 64 * 1024
CHALLENGE_TTL_S_DEFAULT: Final = 1_800

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ChallengeView:
    """What the challenge page shows (no card number, no key material)."""

    gateway_key: str
    charge_id: str
    amount: int
    currency: str
    merchant: str
    description: str | None
    status: ChargeStatus
    outcome: str | None  # passed | failed | expired | canceled, once decided
    expired: bool
    return_url: str | None


@dataclass(frozen=True, slots=True)
class ChallengeResult:
    outcome: str  # "passed" | "failed"
    charge: Charge
    return_url: str | None


def _check_key(value: str, what: str) -> None:
    if not 0 < len(value) <= KEY_LEN_MAX or not value.isprintable():
        raise reject("invalid_request", f"{what} must be 1..{KEY_LEN_MAX} printable characters")


def _check_amount(amount: int, what: str = "amount") -> None:
    if type(amount) is not int or not 0 < amount <= MAX_API_AMOUNT:
        raise reject("invalid_request", f"{what} must be an integer in 1..{MAX_API_AMOUNT}")


def _check_currency(currency: str) -> None:
    try:
        get_currency(currency)
    except MoneyError:
        raise reject("invalid_request", "currency must be a known ISO 4217 code") from None


def _check_url(url: str | None, what: str) -> None:
    if url is None:
        return
    try:
        parsed = httpx.URL(url) if len(url) <= URL_LEN_MAX else None
        host = "" if parsed is None else parsed.host  # decoded lazily: IDNA errors show here
    except (httpx.InvalidURL, ValueError):  # ValueError: IDNA labels, IP literals, ports
        parsed, host = None, ""
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        raise reject("invalid_request", f"{what} must be an absolute http(s) URL")


def _payout(row: PayoutRow) -> Payout:
    return Payout(
        gateway=NAME,
        payout_key=row.payout_key,
        payout_id=row.payout_id,
        amount=row.amount,
        currency=row.currency,
        status=row.status,
    )


class SandboxGateway:
    """The ``sandbox`` gateway. Build it once, in the vault's composition root.

    ``public_base_url`` is the vault's public origin (``http://127.0.0.1:8001``): challenge URLs
    are ``<public_base_url>/v1/3ds/<token>``. ``faults`` is the ``HAMMERLOCK_SANDBOX_FAULTS``
    text (or a parsed plan), ``rng`` its dice. ``exit_process`` and ``sleep`` are injectable for
    tests. Call :meth:`aclose` on shutdown (it stops webhook delivery).
    """

    name: str = NAME

    def __init__(
        self,
        data_dir: Path,
        *,
        public_base_url: str,
        clock: Clock,
        faults: str | FaultPlan = "",
        rng: random.Random | None = None,
        webhook_url: str | None = None,
        webhook_secret: bytes | str | None = None,
        webhook_client: httpx.AsyncClient | None = None,
        challenge_ttl_s: int = CHALLENGE_TTL_S_DEFAULT,
        merchant_name: str = "hammerlock",
        exit_process: Callable[[int], NoReturn] = os._exit,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        base = httpx.URL(public_base_url)
        if base.scheme not in ("http", "https") or not base.host or base.query:
            raise ValueError("public_base_url must be an absolute http(s) URL without a query")
        if not 60 <= challenge_ttl_s <= 86_400:
            raise ValueError("challenge_ttl_s must be within 60..86400")
        if webhook_url is not None and not webhook_secret:
            raise ValueError("a sandbox webhook url needs a webhook secret")
        plan = parse_faults(faults) if isinstance(faults, str) else faults
        self._faults = Faults(plan, rng)
        self._data_dir = data_dir
        self._db = data_dir / "sandbox" / "charges.db"
        store.initialize(self._db)
        key_path = data_dir / "sandbox" / "fingerprint.key"
        create_once(key_path, secrets.token_bytes(32))
        self._fingerprint_key = key_path.read_bytes()
        self._base_url = public_base_url.rstrip("/")
        self._clock = clock
        self._challenge_ttl_us = challenge_ttl_s * 1_000_000
        self._merchant = merchant_name
        self._exit = exit_process
        self._sleep = sleep
        self._webhook_secret = webhook_secret
        self._webhooks = (
            None
            if webhook_url is None or webhook_secret is None
            else WebhookSender(
                webhook_url,
                webhook_secret,
                db_path=self._db,
                clock=clock,
                faults=self._faults,
                client=webhook_client,
                sleep=sleep,
            )
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, public_base_url: str, clock: Clock, **kwargs: Any
    ) -> SandboxGateway:
        secret = settings.sandbox_webhook_secret
        return cls(
            settings.data_dir,
            public_base_url=public_base_url,
            clock=clock,
            faults=settings.sandbox_faults,
            webhook_url=settings.sandbox_webhook_url,
            webhook_secret=None if secret is None else secret.get_secret_value(),
            challenge_ttl_s=settings.sandbox_challenge_ttl_s,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"SandboxGateway(db={str(self._db)!r}, faults={str(self._faults.plan)!r})"

    @property
    def db_path(self) -> Path:
        return self._db

    @property
    def faults(self) -> FaultPlan:
        return self._faults.plan

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        """Replace the fault plan at run time (tests; an admin toggle), keeping the dice."""
        self._faults.plan = plan

    async def aclose(self) -> None:
        if self._webhooks is not None:
            await self._webhooks.aclose()

    # ---------------------------------------------------------------- the Gateway protocol

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        await self._preflight()
        if not isinstance(request.source, CardData):
            raise reject("unsupported_source", "the sandbox charges card data only (via the vault)")
        _check_key(request.gateway_key, "gateway_key")
        _check_amount(request.amount)
        _check_currency(request.currency)
        _check_url(request.return_url, "return_url")
        if request.description is not None and len(request.description) > TEXT_LEN_MAX:
            raise reject("invalid_request", f"description is longer than {TEXT_LEN_MAX}")
        digits = request.source.number.replace(" ", "").replace("-", "")
        if not is_valid_number(digits):
            raise reject("invalid_card", "the card number is not valid")
        card = replace(request.source, number=digits)
        row, created = await self._run(self._authorize_sync, request, card)
        if created:
            self._kick_webhooks()
            await self._after_new_charge()
        return self._charge(row)

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        await self._preflight()
        _check_key(gateway_key, "gateway_key")
        _check_amount(amount)
        return await self._mutate(gateway_key, lambda row, now: captured(row, amount, now))

    async def void(self, gateway_key: str) -> Charge:
        await self._preflight()
        _check_key(gateway_key, "gateway_key")
        return await self._mutate(gateway_key, voided)

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        await self._preflight()
        _check_key(gateway_key, "gateway_key")
        _check_key(refund_key, "refund_key")
        _check_amount(amount)
        row, created = await self._run(self._refund_sync, gateway_key, refund_key, amount)
        if created:
            self._kick_webhooks()
        return Refund(
            gateway=NAME,
            refund_key=row.refund_key,
            refund_id=row.refund_id,
            charge_id=row.charge_id,
            amount=row.amount,
            currency=row.currency,
            status=row.status,
        )

    async def payout(self, request: PayoutRequest) -> Payout:
        await self._preflight()
        _check_key(request.payout_key, "payout_key")
        _check_amount(request.amount)
        _check_currency(request.currency)
        _check_key(request.destination, "destination")
        if contains_pan(request.destination):
            raise reject("invalid_request", "a payout destination is an id, never a card number")
        return _payout(await self._run(self._payout_sync, request))

    async def find_payout(self, payout_key: str) -> Payout | None:
        await self._preflight()
        _check_key(payout_key, "payout_key")
        row = await self._run(self._find_payout_sync, payout_key)
        return None if row is None else _payout(row)

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        await self._preflight()
        _check_key(gateway_key, "gateway_key")
        row = await self._run(self._read_charge, gateway_key)
        if row is None:
            return None
        if self._challenge_due(row):
            return await self._mutate(gateway_key, lambda row, _now_us: row)
        return self._charge(row)

    async def release_from_escrow(self, gateway_key: str) -> Charge:
        _check_key(gateway_key, "gateway_key")
        raise reject(
            "escrow_not_supported",
            "the sandbox holds no escrow at the gateway: hammerlock's ledger holds it",
        )

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        if not self._webhook_secret:
            raise reject("invalid_signature", "no sandbox webhook secret is configured")
        now_s = self._clock.now_us() // 1_000_000
        return verify_webhook(self._webhook_secret, headers, body, now_s=now_s)

    # ---------------------------------------------------------------- sandbox extras

    async def list_charges(
        self, limit: int = 100, cursor: str | None = None, *, gateway_key_prefix: str | None = None
    ) -> dict[str, Any]:
        """``{"data": [charge…], "next_cursor": str | None}``, newest first; never a number."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise reject("invalid_request", f"limit must be within 1..{LIST_LIMIT_MAX}")
        if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) < 19):
            raise reject("invalid_request", "cursor is not one this listing gave out")
        if gateway_key_prefix is not None:
            _check_key(gateway_key_prefix, "gateway_key_prefix")
        before = None if cursor is None else int(cursor)
        rows = await self._run(self._list_sync, limit + 1, before, gateway_key_prefix)
        page = rows[:limit]
        more = len(rows) > limit and page[-1].seq is not None
        return {
            "data": [listing_json(row) for row in page],
            "next_cursor": str(page[-1].seq) if more else None,
        }

    async def write_settlement(self, day: date) -> Path:
        """Write ``<data_dir>/sandbox/settlements/<day>.csv`` (see :mod:`.settlement`)."""
        return await asyncio.to_thread(settlement.write_settlement, self._data_dir, day)

    async def open_dispute(self, gateway_key: str, amount: int) -> str:
        """Test hook: the cardholder's bank charges back ``amount`` of the captured charge made
        under ``gateway_key`` (a chargeback). Records a ``charge.dispute.created`` webhook
        naming the charge, the dispute (``dp_…``) and the amount; returns the dispute id."""
        _check_key(gateway_key, "gateway_key")
        _check_amount(amount)
        dispute_id = await self._run(self._dispute_sync, gateway_key, amount)
        self._kick_webhooks()
        return dispute_id

    def _dispute_sync(self, gateway_key: str, amount: int) -> str:
        with store.write(self._db) as conn:
            charge = store.charge_by_key(conn, gateway_key)
            if charge is None:
                raise reject("charge_not_found", "no charge was made under this gateway_key")
            if charge.status != ChargeStatus.CAPTURED:
                raise reject("invalid_state", f"a {charge.status} charge cannot be disputed")
            if amount > charge.amount_captured - charge.amount_refunded:
                raise reject("amount_exceeds_captured", "more than the charge still holds")
            dispute_id = f"dp_{secrets.token_hex(12)}"
            if self._webhooks is not None:
                event_id = f"evt_{secrets.token_hex(12)}"
                now_us = self._clock.now_us()
                body = orjson.dumps(
                    {
                        "id": event_id,
                        "type": DISPUTE_CREATED,
                        "created": now_us // 1_000_000,
                        "data": {
                            "object": {
                                "object": "dispute",
                                "id": dispute_id,
                                "charge": charge.charge_id,
                                "gateway_key": gateway_key,
                                "amount": amount,
                                "currency": charge.currency,
                            }
                        },
                    },
                    option=orjson.OPT_SORT_KEYS,
                )
                store.insert_event(conn, event_id, DISPUTE_CREATED, body, now_us)
            return dispute_id

    async def flush_webhooks(self) -> int:
        """Deliver pending webhooks now (tests, shutdown); how many were delivered."""
        return 0 if self._webhooks is None else await self._webhooks.flush()

    async def challenge(self, token: str) -> ChallengeView:
        """The challenge behind ``token`` (raises :class:`ChallengeNotFound`)."""
        row = await self._run(self._read_by_token, token)
        if row is None:
            raise ChallengeNotFound(token[:6])
        return ChallengeView(
            gateway_key=row.gateway_key,
            charge_id=row.charge_id,
            amount=row.amount,
            currency=row.currency,
            merchant=self._merchant,
            description=row.description,
            status=ChargeStatus(row.status),
            outcome=row.challenge_outcome,
            expired=row.challenge_outcome is None and self._challenge_due(row),
            return_url=row.return_url,
        )

    async def complete_challenge(self, token: str, *, passed: bool) -> ChallengeResult:
        """Pass or fail the challenge; a second completion answers the first outcome.

        Raises :class:`ChallengeNotFound`, :class:`ChallengeExpired` (the charge is then
        declined) or :class:`ChallengeClosed` (the charge was voided first)."""
        row, changed = await self._run(self._complete_sync, token, passed)
        if changed:
            self._kick_webhooks()
        if row.challenge_outcome == "expired":
            raise ChallengeExpired(row.charge_id)
        if row.challenge_outcome not in ("passed", "failed"):
            raise ChallengeClosed(row.charge_id)
        return ChallengeResult(str(row.challenge_outcome), self._charge(row), row.return_url)

    def challenge_url(self, token: str) -> str:
        return f"{self._base_url}/v1/3ds/{token}"

    # ---------------------------------------------------------------- internals

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except sqlite3.OperationalError as exc:  # locked/busy past the timeout: nothing written
            raise GatewayUnavailable(f"sandbox database unavailable: {exc}") from exc

    async def _preflight(self) -> None:
        if self._faults.fires(FaultName.SLOW):
            await self._sleep(self._faults.duration_s(FaultName.SLOW))
        if self._faults.fires(FaultName.HTTP_500):
            raise GatewayUnavailable("sandbox fault http_500: the gateway answered 500")

    async def _after_new_charge(self) -> None:
        if self._faults.fires(FaultName.CRASH_AFTER_CHARGE):
            os.write(2, b"sandbox: crash_after_charge fault: charge recorded, exiting\n")
            self._exit(CRASH_EXIT_CODE)
        if self._faults.fires(FaultName.TIMEOUT_AFTER_CHARGE):
            await self._sleep(self._faults.duration_s(FaultName.TIMEOUT_AFTER_CHARGE))

    def _kick_webhooks(self) -> None:
        if self._webhooks is not None:
            self._webhooks.kick()

    def _challenge_due(self, row: ChargeRow) -> bool:
        return (
            row.status == ChargeStatus.REQUIRES_ACTION
            and row.challenge_expires_us is not None
            and self._clock.now_us() >= row.challenge_expires_us
        )

    def _charge(self, row: ChargeRow) -> Charge:
        status = ChargeStatus(row.status)
        token = row.challenge_token
        url = (
            self.challenge_url(token) if status is ChargeStatus.REQUIRES_ACTION and token else None
        )
        return Charge(
            gateway=NAME,
            gateway_key=row.gateway_key,
            charge_id=row.charge_id,
            status=status,
            amount=row.amount,
            currency=row.currency,
            amount_captured=row.amount_captured,
            amount_refunded=row.amount_refunded,
            error_code=row.error_code,
            decline_code=row.decline_code,
            message=row.message,
            next_action_url=url,
            card=CardSummary(brand=row.brand, last4=row.last4, fingerprint=row.fingerprint),
        )

    def _fingerprint(self, number: str) -> str:
        digest = hmac.new(self._fingerprint_key, number.encode(), hashlib.sha256).hexdigest()
        return f"fp_{digest[:32]}"

    def _new_row(self, request: AuthorizeRequest, card: CardData, now_us: int) -> ChargeRow:
        today = from_us(now_us)
        decision = decide(
            card.number, card.exp_year, card.exp_month, today=(today.year, today.month)
        )
        if request.force_three_d_secure and decision.outcome is Outcome.APPROVE:
            decision = Decision(Outcome.CHALLENGE)
        fingerprint = self._fingerprint(card.number)
        request_hash = hashlib.sha256(
            orjson.dumps([request.amount, request.currency, request.capture, fingerprint])
        ).hexdigest()
        row = ChargeRow(
            charge_id=f"ch_{secrets.token_hex(12)}",
            gateway_key=request.gateway_key,
            request_hash=request_hash,
            amount=request.amount,
            currency=request.currency,
            capture_requested=request.capture,
            status=ChargeStatus.REQUIRES_ACTION,
            brand=card_brand(card.number),
            last4=card.number[-4:],
            fingerprint=fingerprint,
            return_url=request.return_url,
            description=request.description,
            created_us=now_us,
            updated_us=now_us,
        )
        if decision.outcome is Outcome.CHALLENGE:
            return replace(
                row,
                challenge_token=secrets.token_urlsafe(32),
                challenge_expires_us=now_us + self._challenge_ttl_us,
            )
        if decision.outcome is Outcome.DECLINE:
            return declined(row, decision, now_us)
        return approved(row, now_us)

    def _authorize_sync(self, request: AuthorizeRequest, card: CardData) -> tuple[ChargeRow, bool]:
        row = self._new_row(request, card, self._clock.now_us())
        try:
            return self._insert_or_find(row)
        except sqlite3.IntegrityError:  # lost a race for the key: the second look finds the winner
            return self._insert_or_find(row)

    def _insert_or_find(self, row: ChargeRow) -> tuple[ChargeRow, bool]:
        with store.write(self._db) as conn:
            existing = store.charge_by_key(conn, row.gateway_key)
            if existing is not None:
                if existing.request_hash != row.request_hash:
                    raise reject(
                        "idempotency_mismatch",
                        "this gateway_key was used with a different amount, currency or card",
                    )
                return existing, False
            store.insert_charge(conn, row)
            self._record_event(conn, EVENT_TYPES[ChargeStatus(row.status)], row)
            return row, True

    async def _mutate(
        self,
        gateway_key: str,
        change: Callable[[ChargeRow, int], ChargeRow],
    ) -> Charge:
        row, changed = await self._run(self._mutate_sync, gateway_key, change)
        if changed:
            self._kick_webhooks()
        return self._charge(row)

    def _mutate_sync(
        self, gateway_key: str, change: Callable[[ChargeRow, int], ChargeRow]
    ) -> tuple[ChargeRow, bool]:
        now_us = self._clock.now_us()
        with store.write(self._db) as conn:
            row = store.charge_by_key(conn, gateway_key)
            if row is None:
                raise reject("charge_not_found", "no charge was made under this gateway_key")
            expired = self._challenge_due(row)
            if expired:
                row = self._save(conn, challenge_expired(row, now_us))
            new = change(row, now_us)
            if new is row:
                return row, expired
            return self._save(conn, new), True

    def _save(self, conn: sqlite3.Connection, row: ChargeRow) -> ChargeRow:
        store.save_charge(conn, row)
        self._record_event(conn, EVENT_TYPES[ChargeStatus(row.status)], row)
        return row

    def _record_event(self, conn: sqlite3.Connection, type_: str, row: ChargeRow) -> None:
        if self._webhooks is None:
            return  # no receiver configured: nothing to deliver, ever
        event_id = f"evt_{secrets.token_hex(12)}"
        created_s = row.updated_us // 1_000_000
        body = orjson.dumps(
            {
                "id": event_id,
                "type": type_,
                "created": created_s,
                "data": {"object": charge_json(row)},
            },
            option=orjson.OPT_SORT_KEYS,
        )
        store.insert_event(conn, event_id, type_, body, row.updated_us)

    def _refund_sync(
        self, gateway_key: str, refund_key: str, amount: int
    ) -> tuple[RefundRow, bool]:
        now_us = self._clock.now_us()
        with store.write(self._db) as conn:
            existing = store.refund_by_key(conn, refund_key)
            if existing is not None:
                if (existing.gateway_key, existing.amount) != (gateway_key, amount):
                    raise reject("idempotency_mismatch", "refund_key used for another refund")
                return existing, False
            charge = store.charge_by_key(conn, gateway_key)
            if charge is None:
                raise reject("charge_not_found", "no charge was made under this gateway_key")
            if charge.status != ChargeStatus.CAPTURED:
                raise reject("invalid_state", f"a {charge.status} charge cannot be refunded")
            if charge.amount_refunded + amount > charge.amount_captured:
                left = charge.amount_captured - charge.amount_refunded
                raise reject("amount_exceeds_captured", f"at most {left} is left to refund")
            refund = RefundRow(
                refund_id=f"re_{secrets.token_hex(12)}",
                refund_key=refund_key,
                charge_id=charge.charge_id,
                gateway_key=gateway_key,
                amount=amount,
                currency=charge.currency,
                status="succeeded",
                created_us=now_us,
            )
            store.insert_refund(conn, refund)
            updated = replace(
                charge, amount_refunded=charge.amount_refunded + amount, updated_us=now_us
            )
            store.save_charge(conn, updated)
            self._record_event(conn, "charge.refunded", updated)
            return refund, True

    def _find_payout_sync(self, payout_key: str) -> PayoutRow | None:
        with store.read(self._db) as conn:
            return store.payout_by_key(conn, payout_key)

    def _payout_sync(self, request: PayoutRequest) -> PayoutRow:
        now_us = self._clock.now_us()
        with store.write(self._db) as conn:
            existing = store.payout_by_key(conn, request.payout_key)
            if existing is not None:
                same = (existing.amount, existing.currency, existing.destination) == (
                    request.amount,
                    request.currency,
                    request.destination,
                )
                if not same:
                    raise reject("idempotency_mismatch", "payout_key used for another payout")
                return existing
            payout = PayoutRow(
                payout_id=f"po_{secrets.token_hex(12)}",
                payout_key=request.payout_key,
                destination=request.destination,
                amount=request.amount,
                currency=request.currency,
                status="paid",
                created_us=now_us,
            )
            store.insert_payout(conn, payout)
            return payout

    def _complete_sync(self, token: str, passed: bool) -> tuple[ChargeRow, bool]:
        now_us = self._clock.now_us()
        with store.write(self._db) as conn:
            row = store.charge_by_token(conn, token)
            if row is None:
                raise ChallengeNotFound(token[:6])
            if row.challenge_outcome is not None or row.status != ChargeStatus.REQUIRES_ACTION:
                return row, False
            if self._challenge_due(row):
                return self._save(conn, challenge_expired(row, now_us)), True
            if passed:
                new = replace(approved(row, now_us), challenge_outcome="passed")
            else:
                new = replace(declined(row, AUTH_FAILED, now_us), challenge_outcome="failed")
            return self._save(conn, new), True

    def _read_charge(self, gateway_key: str) -> ChargeRow | None:
        with store.read(self._db) as conn:
            return store.charge_by_key(conn, gateway_key)

    def _read_by_token(self, token: str) -> ChargeRow | None:
        with store.read(self._db) as conn:
            return store.charge_by_token(conn, token)

    def _list_sync(self, limit: int, before_seq: int | None, prefix: str | None) -> list[ChargeRow]:
        with store.read(self._db) as conn:
            return store.list_charges(conn, limit=limit, before_seq=before_seq, key_prefix=prefix)


def verify_webhook(
    secret: bytes | str, headers: Mapping[str, str], body: bytes, *, now_s: int
) -> WebhookEvent:
    """Check a sandbox webhook's signature (5-minute tolerance) and parse it. Used by the API,
    which receives the sandbox's webhooks at ``POST /v1/webhooks/sandbox``."""
    if len(body) > WEBHOOK_BODY_MAX:
        raise reject("invalid_request", "webhook body too large")
    wanted = SIGNATURE_HEADER.lower()
    header = next((v for k, v in headers.items() if k.lower() == wanted), None)
    if header is None:
        raise reject("invalid_signature", f"missing {SIGNATURE_HEADER} header")
    verify_header(secret, header, body, now_s=now_s)
    return _parse_event(body)


def _parse_event(body: bytes) -> WebhookEvent:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise reject("invalid_request", "webhook body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise reject("invalid_request", "webhook body is not a sandbox event")
    event_id, type_, created = payload.get("id"), payload.get("type"), payload.get("created")
    obj = payload["data"].get("object")
    if not (
        isinstance(event_id, str)
        and event_id.startswith("evt_")
        and isinstance(type_, str)
        and isinstance(created, int)
        and isinstance(obj, dict)
    ):
        raise reject("invalid_request", "webhook body is not a sandbox event")
    key, charge_id = obj.get("gateway_key"), obj.get("id")
    dispute_id = amount = None
    if type_ == DISPUTE_CREATED:
        dispute_id, charge_id, amount = obj.get("id"), obj.get("charge"), obj.get("amount")
        if not (isinstance(dispute_id, str) and type(amount) is int and amount > 0):
            raise reject("invalid_request", "a dispute event names its id and amount")
    return WebhookEvent(
        gateway=NAME,
        event_id=event_id,
        type=type_,
        gateway_key=key if isinstance(key, str) else None,
        charge_id=charge_id if isinstance(charge_id, str) else None,
        created_s=created,
        dispute_id=dispute_id,
        amount=amount,
    )
