"""Ledger HTTP routes under ``/v1/ledger`` (the only module here that knows HTTP)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import rfc8785
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator
from sqlalchemy.exc import IntegrityError

from hammerlock.api.deps import get_container, get_ctx
from hammerlock.api.policy import BATCH_MAX_BODY_BYTES, policy
from hammerlock.api.route import HammerlockRoute
from hammerlock.api.schemas import MAX_SAFE_INT, ApiModel, ListEnvelope
from hammerlock.clock import format_rfc3339
from hammerlock.ledger import service
from hammerlock.ledger.model import (
    MAX_BATCH,
    AccountFlag,
    AccountInput,
    AccountState,
    Balances,
    TransferFlag,
    TransferInput,
    TransferRecord,
    flag_names,
)
from hammerlock.ledger.service import LedgerRequest
from hammerlock.money.currency import get_currency
from hammerlock.money.errors import UnknownCurrency
from hammerlock.security.permissions import Permission

__all__ = ["router"]

router = APIRouter(route_class=HammerlockRoute, tags=["ledger"], prefix="/v1/ledger")

LedgerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9:_.-]{1,128}$")]
Code = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.]{1,32}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Amount = Annotated[int, Field(ge=0, le=MAX_SAFE_INT, strict=True)]
AccountFlagName = Literal[
    "debits_must_not_exceed_credits", "credits_must_not_exceed_debits", "closed"
]
TransferFlagName = Literal[
    "linked", "pending", "post_pending", "void_pending", "balancing_debit", "balancing_credit"
]
_MAX_METADATA_BYTES = 1024
_CREATE_ATTEMPTS = 3


def _canonical_metadata(value: dict[str, Any] | None) -> str:
    if value is None:
        return "{}"
    try:
        text = rfc8785.dumps(value).decode()
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise ValueError(f"metadata is not canonicalisable JSON: {exc}") from None
    if len(text.encode()) > _MAX_METADATA_BYTES:
        raise ValueError(f"metadata over {_MAX_METADATA_BYTES} bytes")
    return text


def _known_currency(value: str) -> str:
    try:
        get_currency(value)
    except UnknownCurrency:
        raise ValueError(f"unknown currency {value!r} (ISO 4217 code expected)") from None
    return value


class AccountIn(ApiModel):
    id: LedgerId
    currency: Currency
    code: Code
    flags: Annotated[list[AccountFlagName], Field(max_length=3)] = Field(default_factory=list)
    metadata: dict[str, Any] | None = None

    _currency = field_validator("currency")(_known_currency)

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        _canonical_metadata(value)
        return value

    @model_validator(mode="after")
    def _flags(self) -> AccountIn:
        if {"debits_must_not_exceed_credits", "credits_must_not_exceed_debits"} <= set(self.flags):
            raise ValueError("an account takes at most one of the two limit flags")
        return self

    def to_input(self) -> AccountInput:
        flags = AccountFlag(0)
        for name in self.flags:
            flags |= AccountFlag[name.upper()]
        return AccountInput(
            id=self.id,
            currency=self.currency,
            code=self.code,
            flags=flags,
            metadata=_canonical_metadata(self.metadata),
        )


class AccountsIn(ApiModel):
    accounts: Annotated[list[AccountIn], Field(min_length=1, max_length=MAX_BATCH)]


class TransferIn(ApiModel):
    id: LedgerId
    debit_account_id: LedgerId | None = None
    credit_account_id: LedgerId | None = None
    amount: Amount | None = None
    currency: Currency | None = None
    code: Code | None = None
    flags: Annotated[list[TransferFlagName], Field(max_length=6)] = Field(default_factory=list)
    pending_id: LedgerId | None = None
    timeout_s: Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)] = 0
    metadata: dict[str, Any] | None = None

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        return None if value is None else _known_currency(value)

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        _canonical_metadata(value)
        return value

    @model_validator(mode="after")
    def _required(self) -> TransferIn:
        if {"post_pending", "void_pending"} & set(self.flags):
            return self  # accounts, amount, currency and code come from the pending transfer
        missing = [
            name
            for name in ("debit_account_id", "credit_account_id", "amount", "currency", "code")
            if getattr(self, name) is None
        ]
        if missing:
            raise ValueError(f"required unless posting or voiding a hold: {', '.join(missing)}")
        return self

    def to_input(self) -> TransferInput:
        flags = TransferFlag(0)
        for name in self.flags:
            flags |= TransferFlag[name.upper()]
        return TransferInput(
            id=self.id,
            debit_account_id=self.debit_account_id,
            credit_account_id=self.credit_account_id,
            amount=self.amount,
            currency=self.currency,
            code=self.code,
            flags=flags,
            pending_id=self.pending_id,
            timeout_s=self.timeout_s,
            metadata=_canonical_metadata(self.metadata),
        )


class TransfersIn(ApiModel):
    transfers: Annotated[list[TransferIn], Field(min_length=1, max_length=MAX_BATCH)]


class ItemResult(BaseModel):
    id: str
    result: str


class Results(BaseModel):
    results: list[ItemResult]


class BalancesOut(BaseModel):
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @classmethod
    def of(cls, b: Balances) -> BalancesOut:
        return cls(
            debits_pending=b.debits_pending,
            debits_posted=b.debits_posted,
            credits_pending=b.credits_pending,
            credits_posted=b.credits_posted,
        )


class AccountOut(BalancesOut):
    id: str
    currency: str
    code: str
    flags: list[str]
    metadata: dict[str, Any]

    @classmethod
    def of_account(cls, a: AccountState) -> AccountOut:
        return cls(
            id=a.id,
            currency=a.currency,
            code=a.code,
            flags=flag_names(a.flags),
            metadata=json.loads(a.metadata),
            **BalancesOut.of(a.balances).model_dump(),
        )


class TransferOut(BaseModel):
    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    code: str
    flags: list[str]
    pending_id: str | None
    timeout_s: int
    metadata: dict[str, Any]
    timestamp: str
    expires_at: str | None

    @classmethod
    def of(cls, t: TransferRecord) -> TransferOut:
        return cls(
            id=t.id,
            debit_account_id=t.debit_account_id,
            credit_account_id=t.credit_account_id,
            amount=t.amount,
            currency=t.currency,
            code=t.code,
            flags=flag_names(t.flags),
            pending_id=t.pending_id,
            timeout_s=t.timeout_s,
            metadata=json.loads(t.metadata),
            timestamp=format_rfc3339(t.timestamp_us),
            expires_at=None if t.expires_us is None else format_rfc3339(t.expires_us),
        )


class StatementLine(TransferOut):
    balance_after: BalancesOut


IdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9:_.-]{1,128}$")]  # the form of LedgerId


@router.post(
    "/accounts",
    openapi_extra=policy(Permission.LEDGER_WRITE, max_body_bytes=BATCH_MAX_BODY_BYTES),
)
async def create_accounts(request: Request, body: AccountsIn) -> Results:
    """Create accounts; one result per account (`ok`, `exists`, `exists_with_different_*`,
    `account_reserved`)."""
    container = get_container(request)
    inputs = [a.to_input() for a in body.accounts]
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        try:
            async with container.db.transaction() as uow:
                results = await service.create_accounts(uow, get_ctx(request), inputs)
            break
        except IntegrityError:
            # PostgreSQL: a concurrent request inserted one of these ids after our lock-read
            # saw none (FOR UPDATE cannot lock a missing row). Everything rolled back; run
            # again and the ids answer `exists`.
            if attempt == _CREATE_ATTEMPTS:
                raise
    return Results(results=[ItemResult(id=r.id, result=r.result) for r in results])


@router.get("/accounts/{account_id}", openapi_extra=policy(Permission.LEDGER_READ))
async def get_account(request: Request, account_id: IdPath) -> AccountOut:
    async with get_container(request).db.transaction(write=False) as uow:
        return AccountOut.of_account(await service.get_account(uow, account_id))


@router.post("/accounts/{account_id}/close", openapi_extra=policy(Permission.LEDGER_ACCOUNTS_CLOSE))
async def close_account(request: Request, account_id: IdPath) -> AccountOut:
    """Close an account: later transfers touching it fail with `*_account_closed`."""
    async with get_container(request).db.transaction() as uow:
        account = await service.close_account(uow, get_ctx(request), account_id)
    return AccountOut.of_account(account)


@router.get("/accounts/{account_id}/transfers", openapi_extra=policy(Permission.LEDGER_READ))
async def account_statement(
    request: Request,
    account_id: IdPath,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    # At most 18 digits: the cursor is a BIGINT sequence number (a 19- or 20-digit one would
    # overflow the database's integer type, a 500 instead of a 422).
    cursor: Annotated[str | None, Query(max_length=18, pattern=r"^[0-9]+$")] = None,
) -> ListEnvelope[StatementLine]:
    """The account's transfers in commit order, each with the account's balances after it."""
    async with get_container(request).db.transaction(write=False) as uow:
        rows = await service.statement(uow, account_id, after_seq=int(cursor or 0), limit=limit + 1)
    page = rows[:limit]
    lines = [
        StatementLine(
            **TransferOut.of(t).model_dump(),
            balance_after=BalancesOut.of(
                t.debit_after if t.debit_account_id == account_id else t.credit_after
            ),
        )
        for _, t in page
    ]
    next_cursor = str(page[-1][0]) if len(rows) > limit else None
    return ListEnvelope[StatementLine](data=lines, next_cursor=next_cursor)


@router.post(
    "/transfers",
    openapi_extra=policy(
        Permission.LEDGER_WRITE, money_moving=True, max_body_bytes=BATCH_MAX_BODY_BYTES
    ),
)
async def create_transfers(request: Request, body: TransfersIn) -> Results:
    """Create transfers (≤ 8,190); one result per transfer, in request order."""
    container = get_container(request)
    inputs = [t.to_input() for t in body.transfers]
    results = await container.ledger_writer.submit(
        LedgerRequest(inputs, get_ctx(request), public=True)
    )
    return Results(
        results=[ItemResult(id=t.id, result=r) for t, r in zip(inputs, results, strict=True)]
    )


@router.get("/transfers/{transfer_id}", openapi_extra=policy(Permission.LEDGER_READ))
async def get_transfer(request: Request, transfer_id: IdPath) -> TransferOut:
    async with get_container(request).db.transaction(write=False) as uow:
        return TransferOut.of(await service.get_transfer(uow, transfer_id))
