"""The card vault: the only component that ever sees a card number or CVC.

A separate FastAPI app (:mod:`.app`) in a separate process (``hammerlock vault serve``), with its
own database (:mod:`.storage`, :mod:`.schema`) and key material (:mod:`.hazmat`). Checkout pages
post cards to ``POST /v1/tokens`` and get a ``tok_…``; the API never receives a number back: it
asks the vault to charge a token (:mod:`.client`: :class:`VaultClient`, :class:`VaultGateway`),
over calls authenticated both ways (:mod:`.signing`). The vault's audit events reach the main
audit trail through :class:`~hammerlock.vault.puller.AuditPuller`.

ADR 0008 and docs/security.md ("Card vault") describe the design.
"""
