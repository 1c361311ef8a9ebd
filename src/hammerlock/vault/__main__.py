"""``python -m hammerlock.vault``: ``hammerlock vault serve`` (how ``serve`` starts the vault)."""

import sys

from hammerlock.cli.errors import run
from hammerlock.vault.cli import vault_app

if __name__ == "__main__":
    run(vault_app, ["serve", *sys.argv[1:]], prog_name="hammerlock vault")
