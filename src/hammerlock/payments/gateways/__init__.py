"""Gateway adapters. Every adapter implements :class:`~hammerlock.payments.gateways.base.Gateway`
and passes the one contract suite in ``tests/contract/test_gateway_contract.py``."""
