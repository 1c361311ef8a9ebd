"""The review queue tables (only ``risk`` and ``payments.service`` import this)."""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from hammerlock.db.metadata import metadata
from hammerlock.db.queues import Key
from hammerlock.db.queues import after as after_key
from hammerlock.db.uow import UnitOfWork
from hammerlock.payments.model import Approval, Review, ReviewStatus

__all__ = ["due_reviews", "get_review", "insert_review", "list_reviews", "save_review"]

BIG = sa.BigInteger

risk_reviews = sa.Table(
    "risk_reviews",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("payment_intent", sa.String(64), nullable=False),
    sa.Column("refund_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("approvals_required", sa.Integer, nullable=False),
    sa.Column("score", sa.Integer, nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("expires_us", BIG, nullable=False),
    sa.Column("created_by_principal", sa.String(128), nullable=True),
    sa.Column("decided_by", sa.String(128), nullable=True),
    sa.Column("note", sa.String(1000), nullable=True),
    sa.Column("created_us", BIG, nullable=False),
    sa.Column("decided_us", BIG, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.CheckConstraint("approvals_required BETWEEN 1 AND 2", name="approvals_required_range"),
)
sa.Index("ix_risk_reviews_status", risk_reviews.c.status, risk_reviews.c.created_us)

risk_review_approvals = sa.Table(
    "risk_review_approvals",
    metadata,
    sa.Column("review_id", sa.String(64), primary_key=True),
    sa.Column("reviewer_id", sa.String(128), primary_key=True),
    sa.Column("at_us", BIG, nullable=False),
)


async def _approvals(uow: UnitOfWork, review_ids: list[str]) -> dict[str, list[Approval]]:
    t = risk_review_approvals
    out: dict[str, list[Approval]] = {i: [] for i in review_ids}
    if not review_ids:
        return out
    rows = await uow.conn.execute(
        sa.select(t).where(t.c.review_id.in_(review_ids)).order_by(t.c.at_us, t.c.reviewer_id)
    )
    for row in rows.mappings():
        out[row["review_id"]].append(Approval(row["reviewer_id"], row["at_us"]))
    return out


def _review(row: RowMapping, approvals: list[Approval]) -> Review:
    return Review(
        id=row["id"],
        payment_intent=row["payment_intent"],
        refund_id=row["refund_id"],
        status=ReviewStatus(row["status"]),
        approvals_required=row["approvals_required"],
        approvals=tuple(approvals),
        score=row["score"],
        reasons=tuple(orjson.loads(row["reasons"])),
        expires_us=row["expires_us"],
        created_by_principal=row["created_by_principal"],
        decided_by=row["decided_by"],
        note=row["note"],
        created_us=row["created_us"],
        decided_us=row["decided_us"],
    )


async def insert_review(uow: UnitOfWork, review: Review) -> None:
    await uow.conn.execute(
        risk_reviews.insert().values(
            id=review.id,
            payment_intent=review.payment_intent,
            refund_id=review.refund_id,
            status=review.status.value,
            approvals_required=review.approvals_required,
            score=review.score,
            reasons=orjson.dumps(list(review.reasons)).decode(),
            expires_us=review.expires_us,
            created_by_principal=review.created_by_principal,
            decided_by=None,
            note=None,
            created_us=review.created_us,
            decided_us=None,
            version=0,
        )
    )


async def get_review(
    uow: UnitOfWork, review_id: str, *, for_update: bool = False
) -> tuple[Review, int] | None:
    query = sa.select(risk_reviews).where(risk_reviews.c.id == review_id)
    if for_update and uow.is_postgres:
        query = query.with_for_update()
    row = (await uow.conn.execute(query)).mappings().first()
    if row is None:
        return None
    approvals = await _approvals(uow, [review_id])
    return _review(row, approvals[review_id]), int(row["version"])


async def save_review(uow: UnitOfWork, before: Review, after: Review, version: int) -> bool:
    t = risk_reviews
    result = await uow.conn.execute(
        t.update()
        .where(t.c.id == after.id, t.c.version == version)
        .values(
            status=after.status.value,
            decided_by=after.decided_by,
            note=after.note,
            decided_us=after.decided_us,
            version=version + 1,
        )
    )
    if result.rowcount != 1:
        return False
    known = {a.reviewer_id for a in before.approvals}
    new = [a for a in after.approvals if a.reviewer_id not in known]
    if new:
        await uow.conn.execute(
            risk_review_approvals.insert(),
            [{"review_id": after.id, "reviewer_id": a.reviewer_id, "at_us": a.at_us} for a in new],
        )
    return True


async def list_reviews(
    uow: UnitOfWork, *, status: ReviewStatus | None, after_id: str | None, limit: int
) -> list[Review]:
    t = risk_reviews
    query = sa.select(t).order_by(t.c.id).limit(limit)
    if status is not None:
        query = query.where(t.c.status == status.value)
    if after_id is not None:
        query = query.where(t.c.id > after_id)
    rows = (await uow.conn.execute(query)).mappings().all()
    approvals = await _approvals(uow, [r["id"] for r in rows])
    return [_review(r, approvals[r["id"]]) for r in rows]


async def due_reviews(
    uow: UnitOfWork, *, now_us: int, limit: int, after: Key | None = None
) -> list[Key]:
    """``(expires_us, id)`` of open reviews due by ``now_us``, in that order, from after
    ``after`` (read round-robin by the janitor: :mod:`hammerlock.db.queues`)."""
    t = risk_reviews
    rows = await uow.conn.execute(
        sa.select(t.c.expires_us, t.c.id)
        .where(
            t.c.status == ReviewStatus.OPEN.value,
            t.c.expires_us <= now_us,
            *after_key(t.c.expires_us, t.c.id, after),
        )
        .order_by(t.c.expires_us, t.c.id)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows]
