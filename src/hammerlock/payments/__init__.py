"""Payment intents, refunds, gateway adapters, 3-D Secure, inbound webhooks (issue #5)."""
