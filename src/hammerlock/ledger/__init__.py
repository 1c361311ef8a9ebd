"""The double-entry ledger: accounts, transfers, two-phase holds, linked chains, group commit."""
