"""The review queue's rules as pure functions: who may approve, when a review is decided.

Four-eyes: a review that needs two approvals needs two *different* reviewers; nobody approves a
payment they created (checked by principal); a decided review stays decided.
"""

from __future__ import annotations

from dataclasses import replace

from hammerlock.payments.model import Approval, Review, ReviewStatus
from hammerlock.risk.errors import AlreadyApproved, ReviewClosed, SelfReview

__all__ = ["approve", "expire", "reject"]


def _check_open(review: Review) -> None:
    if review.status is not ReviewStatus.OPEN:
        raise ReviewClosed(f"review {review.id} is already {review.status.value}")


def _check_not_creator(review: Review, reviewer_id: str) -> None:
    if review.created_by_principal is not None and review.created_by_principal == reviewer_id:
        raise SelfReview("a reviewer may not decide a payment they created")


def approve(review: Review, reviewer_id: str, now_us: int, note: str | None) -> Review:
    """Add ``reviewer_id``'s approval; the review is approved once enough distinct reviewers
    have approved."""
    _check_open(review)
    _check_not_creator(review, reviewer_id)
    if any(a.reviewer_id == reviewer_id for a in review.approvals):
        raise AlreadyApproved(
            f"reviewer {reviewer_id} already approved review {review.id}; "
            f"it needs {review.approvals_required} different reviewers"
        )
    approvals = (*review.approvals, Approval(reviewer_id, now_us))
    done = len(approvals) >= review.approvals_required
    return replace(
        review,
        approvals=approvals,
        status=ReviewStatus.APPROVED if done else ReviewStatus.OPEN,
        decided_by=reviewer_id if done else None,
        decided_us=now_us if done else None,
        note=note if done else review.note,
    )


def reject(review: Review, reviewer_id: str, now_us: int, note: str | None) -> Review:
    _check_open(review)
    _check_not_creator(review, reviewer_id)
    return replace(
        review, status=ReviewStatus.REJECTED, decided_by=reviewer_id, decided_us=now_us, note=note
    )


def expire(review: Review, now_us: int) -> Review:
    """An open review that outlives its deadline is rejected (before the authorization lapses)."""
    _check_open(review)
    return replace(
        review,
        status=ReviewStatus.REJECTED,
        decided_by="system:expiry",
        decided_us=now_us,
        note="expired before a decision",
    )
