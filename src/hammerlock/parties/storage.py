"""The parties tables and their queries (only ``parties.service`` imports this)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from hammerlock.db.metadata import metadata
from hammerlock.db.uow import UnitOfWork
from hammerlock.parties.model import Card, Party, PartyKind

__all__ = ["parties", "party_cards"]

BIG = sa.BigInteger

parties = sa.Table(
    "parties",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320), nullable=True),
    sa.Column("created_by_principal", sa.String(128), nullable=True),
    sa.Column("created_us", BIG, nullable=False),
    sa.CheckConstraint("kind IN ('bidder', 'seller')", name="kind_known"),
)

# 0008: a seller's payout destination at the gateway (one row per seller; history in the audit log)
payout_destinations = sa.Table(
    "party_payout_destinations",
    metadata,
    sa.Column("seller_id", sa.String(64), primary_key=True),
    sa.Column("gateway_account", sa.String(128), nullable=False),
    sa.Column("updated_by_principal", sa.String(128), nullable=True),
    sa.Column("updated_us", BIG, nullable=False),
)


async def get_payout_destination(uow: UnitOfWork, seller_id: str) -> str | None:
    t = payout_destinations
    query = sa.select(t.c.gateway_account).where(t.c.seller_id == seller_id)
    value = (await uow.conn.execute(query)).scalar()
    return None if value is None else str(value)


async def put_payout_destination(
    uow: UnitOfWork, seller_id: str, gateway_account: str, principal: str | None
) -> None:
    t = payout_destinations
    values = {
        "gateway_account": gateway_account,
        "updated_by_principal": principal,
        "updated_us": uow.clock.now_us(),
    }
    updated = await uow.conn.execute(t.update().where(t.c.seller_id == seller_id).values(values))
    if updated.rowcount == 0:
        await uow.conn.execute(t.insert().values(seller_id=seller_id, **values))


party_cards = sa.Table(
    "party_cards",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("bidder_id", sa.String(64), nullable=False),
    sa.Column("payment_method", sa.String(128), nullable=False),
    sa.Column("brand", sa.String(32), nullable=True),
    sa.Column("last4", sa.String(4), nullable=True),
    sa.Column("created_us", BIG, nullable=False),
    sa.UniqueConstraint("bidder_id", "payment_method"),
)
sa.Index("ix_party_cards_bidder_id", party_cards.c.bidder_id, party_cards.c.created_us)


def _party(row: RowMapping) -> Party:
    return Party(
        id=row["id"],
        kind=PartyKind(row["kind"]),
        name=row["name"],
        email=row["email"],
        created_us=row["created_us"],
    )


def _card(row: RowMapping) -> Card:
    return Card(
        id=row["id"],
        bidder_id=row["bidder_id"],
        payment_method=row["payment_method"],
        brand=row["brand"],
        last4=row["last4"],
        created_us=row["created_us"],
    )


async def insert_party(uow: UnitOfWork, party: Party, created_by: str | None) -> None:
    await uow.conn.execute(
        parties.insert().values(
            id=party.id,
            kind=party.kind.value,
            name=party.name,
            email=party.email,
            created_by_principal=created_by,
            created_us=party.created_us,
        )
    )


async def get_party(uow: UnitOfWork, party_id: str) -> Party | None:
    row = (
        (await uow.conn.execute(sa.select(parties).where(parties.c.id == party_id)))
        .mappings()
        .first()
    )
    return None if row is None else _party(row)


async def find_card(uow: UnitOfWork, bidder_id: str, payment_method: str) -> Card | None:
    t = party_cards
    row = (
        (
            await uow.conn.execute(
                sa.select(t).where(t.c.bidder_id == bidder_id, t.c.payment_method == payment_method)
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _card(row)


async def insert_card(uow: UnitOfWork, card: Card) -> None:
    await uow.conn.execute(
        party_cards.insert().values(
            id=card.id,
            bidder_id=card.bidder_id,
            payment_method=card.payment_method,
            brand=card.brand,
            last4=card.last4,
            created_us=card.created_us,
        )
    )


async def latest_card(uow: UnitOfWork, bidder_id: str) -> Card | None:
    t = party_cards
    row = (
        (
            await uow.conn.execute(
                sa.select(t)
                .where(t.c.bidder_id == bidder_id)
                .order_by(t.c.created_us.desc(), t.c.id.desc())
                .limit(1)
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _card(row)


async def bidders_with_cards(
    uow: UnitOfWork, party_ids: Iterable[str]
) -> dict[str, tuple[str, bool]]:
    """For each of ``party_ids`` that exists: (its kind, whether it has a card on file); one
    statement."""
    ids = sorted(set(party_ids))
    if not ids:
        return {}
    rows = await uow.conn.execute(_BIDDERS_WITH_CARDS, {"ids": ids})
    return {str(r[0]): (str(r[1]), bool(r[2])) for r in rows}


# Built once (the bid writer runs it per batch; SQLAlchemy memoizes a statement's cache key on
# the statement object).
_BIDDERS_WITH_CARDS = sa.select(
    parties.c.id,
    parties.c.kind,
    sa.select(party_cards.c.id).where(party_cards.c.bidder_id == parties.c.id).exists(),
).where(parties.c.id.in_(sa.bindparam("ids", expanding=True)))
