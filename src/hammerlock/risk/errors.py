"""Risk review errors, each with a stable code (docs/errors.md).

RiskError
 ├── ReviewNotFound       review_not_found        404
 ├── ReviewClosed         invalid_state_transition 409  (already approved or rejected)
 ├── AlreadyApproved      already_approved        409  (four-eyes: a second, different reviewer)
 └── SelfReview           self_review_forbidden   403  (nobody approves what they created)
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = ["AlreadyApproved", "ReviewClosed", "ReviewNotFound", "RiskError", "SelfReview"]


class RiskError(DomainError):
    code = "risk_error"


class ReviewNotFound(RiskError):
    code = "review_not_found"
    title = "No such review"


class ReviewClosed(RiskError):
    code = "invalid_state_transition"
    title = "The review is already decided"


class AlreadyApproved(RiskError):
    code = "already_approved"
    title = "This reviewer already approved"


class SelfReview(RiskError):
    code = "self_review_forbidden"
    title = "A reviewer may not decide a payment they created"
