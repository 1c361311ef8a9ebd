"""Parties: the marketplace's bidders and sellers, their API keys and bidders' cards on file."""
