"""The audit trail: events recorded in the same transaction as the change they describe."""
