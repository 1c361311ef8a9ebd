"""Dangerous material: data keys and key-encryption keys in the clear.

Only :mod:`hammerlock.vault` imports this package (an import-linter contract says so). Nothing here
logs, and nothing here returns a key to a caller that does not need to hold it.
"""
