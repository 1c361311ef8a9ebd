"""The review queue over HTTP: ``GET /v1/reviews``, ``POST /v1/reviews/{id}/approve|reject``.

Reviewers (and admins) decide; nobody decides a payment they created (403
``self_review_forbidden``); at the four-eyes threshold a second approval by the same reviewer is
409 ``already_approved``. A decision moves the payment on by itself (capture or void).
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from hammerlock.api.deps import get_container, get_ctx
from hammerlock.api.policy import policy
from hammerlock.api.route import HammerlockRoute
from hammerlock.api.schemas import ApiModel, Note
from hammerlock.payments.model import ReviewStatus
from hammerlock.payments.views import review_json
from hammerlock.security.permissions import Permission

__all__ = ["router"]

router = APIRouter(route_class=HammerlockRoute, tags=["reviews"], prefix="/v1/reviews")

ReviewId = Annotated[str, Path(pattern=r"^rev_[a-f0-9]{14,40}$")]
Cursor = Annotated[str, Query(pattern=r"^rev_[a-f0-9]{14,40}$")]


class DecisionIn(ApiModel):
    note: Note | None = None


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("", openapi_extra=policy(Permission.REVIEWS_READ), summary="The review queue")
async def list_reviews(
    request: Request,
    status: Literal["open", "approved", "rejected"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor | None = None,
) -> Response:
    reviews = await get_container(request).payments.list_reviews(
        status=ReviewStatus(status) if status else None, after_id=cursor, limit=limit
    )
    next_cursor = reviews[-1].id if len(reviews) == limit else None
    return _json({"data": [review_json(r) for r in reviews], "next_cursor": next_cursor})


@router.get("/{review_id}", openapi_extra=policy(Permission.REVIEWS_READ), summary="A review")
async def get_review(request: Request, review_id: ReviewId) -> Response:
    return _json(review_json(await get_container(request).payments.get_review(review_id)))


_DECIDE = policy(Permission.REVIEWS_DECIDE, money_moving=True)


@router.post("/{review_id}/approve", openapi_extra=_DECIDE, summary="Approve a review")
async def approve(request: Request, review_id: ReviewId, body: DecisionIn) -> Response:
    review = await get_container(request).payments.decide_review(
        get_ctx(request), review_id, approve=True, note=body.note
    )
    return _json(review_json(review))


@router.post("/{review_id}/reject", openapi_extra=_DECIDE, summary="Reject a review")
async def reject(request: Request, review_id: ReviewId, body: DecisionIn) -> Response:
    review = await get_container(request).payments.decide_review(
        get_ctx(request), review_id, approve=False, note=body.note
    )
    return _json(review_json(review))
