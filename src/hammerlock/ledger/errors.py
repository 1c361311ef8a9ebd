"""Ledger errors. Business outcomes of transfers are per-item result codes, not exceptions;
these are for single-object routes.

    DomainError
     └── LedgerError
          ├── AccountNotFound    (404 account_not_found)
          ├── TransferNotFound   (404 transfer_not_found)
          ├── AccountReserved    (403 account_reserved)
          └── LedgerBusy         (503 ledger_busy: the writer queue is full, timed out or stopping)
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = ["AccountNotFound", "AccountReserved", "LedgerBusy", "LedgerError", "TransferNotFound"]


class LedgerError(DomainError):
    code = "ledger_error"


class AccountNotFound(LedgerError):
    code = "account_not_found"
    title = "No such ledger account"


class TransferNotFound(LedgerError):
    code = "transfer_not_found"
    title = "No such ledger transfer"


class AccountReserved(LedgerError):
    code = "account_reserved"
    title = "Account is owned by a domain service"


class LedgerBusy(LedgerError):
    code = "ledger_busy"
    title = "The ledger is busy; retry with the same Idempotency-Key"
