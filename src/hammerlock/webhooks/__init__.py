"""Outbound webhooks: events recorded with the change they announce, delivered signed, retried."""
