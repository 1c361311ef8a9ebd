"""Audit errors: what a reader of the audit trail asked for that the log cannot answer.

    DomainError
     └── AuditError
          ├── TreeHeadNotFound      (404 tree_head_not_found: no tree head is signed yet)
          ├── ProofUnavailable      (404 audit_proof_unavailable: no signed head of that size)
          └── InvalidRange          (422 invalid_range: seq >= tree_size, first > second, ...)

Tampering found by ``hammerlock audit verify`` is not an exception: it is a list of
:class:`hammerlock.audit.verify.Problem` values in the report.
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = ["AuditError", "InvalidRange", "ProofUnavailable", "TreeHeadNotFound"]


class AuditError(DomainError):
    code = "audit_error"


class TreeHeadNotFound(AuditError):
    code = "tree_head_not_found"
    title = "No signed tree head yet"


class ProofUnavailable(AuditError):
    code = "audit_proof_unavailable"
    title = "No signed tree head of that size"


class InvalidRange(AuditError):
    code = "invalid_range"
    title = "The requested range is empty or reversed"
