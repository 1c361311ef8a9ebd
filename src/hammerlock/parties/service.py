"""Parties' business events: register a bidder or seller (with its API key), add a card on file.

Each function takes the caller's unit of work: the party row, its key and the audit events commit
together. Looking a card token up at the vault is the caller's job, before the transaction
(no outside call ever sits inside one).

Ownership (DESIGN.md "Who may do what"): a bidder's or seller's key acts only on its own
principal; another party's object answers 404 (:func:`check_owner`).
"""

from __future__ import annotations

from collections.abc import Iterable

from hammerlock.audit import service as audit
from hammerlock.audit.model import Context
from hammerlock.db.uow import UnitOfWork
from hammerlock.parties import storage
from hammerlock.parties.errors import PartyNotFound
from hammerlock.parties.model import Card, Party, PartyKind, new_card_id, new_party_id
from hammerlock.security import service as keys_service
from hammerlock.security.permissions import Role

__all__ = [
    "PARTY_ROLES",
    "add_card",
    "bidders_ready",
    "check_owner",
    "default_card",
    "get_party",
    "is_party_role",
    "payout_destination",
    "register",
    "require_party",
    "set_payout_destination",
]

PARTY_ROLES = frozenset({Role.BIDDER.value, Role.SELLER.value})
_ROLE_OF = {PartyKind.BIDDER: Role.BIDDER, PartyKind.SELLER: Role.SELLER}


def is_party_role(ctx: Context) -> bool:
    """True when the caller is a bidder's or seller's own key (not staff, not the service)."""
    return ctx.actor.role in PARTY_ROLES


def check_owner(ctx: Context, owner_id: str, what: str) -> None:
    """A party's key sees only its own principal's objects; others do not exist for it."""
    if is_party_role(ctx) and ctx.actor.principal_id != owner_id:
        raise PartyNotFound(f"no {what}")


async def get_party(uow: UnitOfWork, party_id: str) -> Party | None:
    return await storage.get_party(uow, party_id)


async def require_party(uow: UnitOfWork, ctx: Context, party_id: str, kind: PartyKind) -> Party:
    """The party ``party_id`` of ``kind`` as the caller may see it, or PartyNotFound."""
    check_owner(ctx, party_id, f"{kind.value} {party_id}")
    party = await storage.get_party(uow, party_id)
    if party is None or party.kind is not kind:
        raise PartyNotFound(f"no {kind.value} {party_id}")
    return party


async def register(
    uow: UnitOfWork,
    ctx: Context,
    *,
    kind: PartyKind,
    name: str,
    email: str | None,
    pepper: bytes,
) -> tuple[Party, keys_service.CreatedKey]:
    """A new bidder or seller and an API key bound to it (role bidder or seller)."""
    now_us = uow.clock.now_us()
    party = Party(id=new_party_id(kind), kind=kind, name=name, email=email, created_us=now_us)
    await storage.insert_party(uow, party, ctx.actor.principal_id)
    created = await keys_service.create_key(
        uow,
        ctx,
        pepper=pepper,
        role=_ROLE_OF[kind],
        name=f"{kind.value} {party.id}",
        principal_id=party.id,
    )
    await audit.record(
        uow,
        ctx.event(
            f"parties.{kind.value}.create",
            resource_type=kind.value,
            resource_id=party.id,
            ts_us=now_us,
            details={"key_id": created.key.id, "has_email": email is not None},
        ),
    )
    return party, created


async def add_card(
    uow: UnitOfWork,
    ctx: Context,
    bidder_id: str,
    *,
    payment_method: str,
    brand: str | None,
    last4: str | None,
) -> Card:
    """Record a card on file (idempotent per bidder and token: the same card answers again)."""
    await require_party(uow, ctx, bidder_id, PartyKind.BIDDER)
    existing = await storage.find_card(uow, bidder_id, payment_method)
    if existing is not None:
        return existing
    card = Card(
        id=new_card_id(),
        bidder_id=bidder_id,
        payment_method=payment_method,
        brand=brand,
        last4=last4,
        created_us=uow.clock.now_us(),
    )
    await storage.insert_card(uow, card)
    await audit.record(
        uow,
        ctx.event(
            "parties.card.add",
            resource_type="card",
            resource_id=card.id,
            ts_us=card.created_us,
            details={"bidder_id": bidder_id, "brand": brand, "last4": last4},
        ),
    )
    return card


async def set_payout_destination(
    uow: UnitOfWork, ctx: Context, seller_id: str, *, gateway_account: str
) -> None:
    """Record where the gateway pays the seller out (an account id there, never a card number:
    the API's card-number guard has refused one before this runs)."""
    await require_party(uow, ctx, seller_id, PartyKind.SELLER)
    previous = await storage.get_payout_destination(uow, seller_id)
    await storage.put_payout_destination(uow, seller_id, gateway_account, ctx.actor.principal_id)
    await audit.record(
        uow,
        ctx.event(
            "parties.seller.payout_destination",
            resource_type="seller",
            resource_id=seller_id,
            ts_us=uow.clock.now_us(),
            details={"gateway_account": gateway_account, "replaced": previous},
        ),
    )


async def payout_destination(uow: UnitOfWork, seller_id: str) -> str | None:
    """The seller's payout destination at the gateway, or ``None`` (escrow's payouts wait)."""
    return await storage.get_payout_destination(uow, seller_id)


async def default_card(uow: UnitOfWork, bidder_id: str) -> str | None:
    """The bidder's card on file to charge (the latest added), as a payment method token."""
    card = await storage.latest_card(uow, bidder_id)
    return None if card is None else card.payment_method


async def bidders_ready(uow: UnitOfWork, bidder_ids: Iterable[str]) -> dict[str, str]:
    """For each id: ``ready`` (a bidder with a card on file), ``no_card`` or ``not_found``.
    One statement for any number of bidders (the bid batch asks once per batch)."""
    ids = set(bidder_ids)
    found = await storage.bidders_with_cards(uow, ids)
    out: dict[str, str] = {}
    for bidder_id in ids:
        kind, carded = found.get(bidder_id, (None, False))
        if kind != PartyKind.BIDDER.value:
            out[bidder_id] = "not_found"
        else:
            out[bidder_id] = "ready" if carded else "no_card"
    return out
