"""``python -m hammerlock.vault``: ``hammerlock vault serve`` (how ``serve`` starts the vault)."""

from hammerlock.vault.cli import vault_app

if __name__ == "__main__":
    vault_app(["serve", *__import__("sys").argv[1:]], prog_name="hammerlock vault")
