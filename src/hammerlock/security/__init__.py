"""Security: API keys, roles and permissions, card-number detection, redaction."""
