"""Entry point for uvicorn: ``uvicorn --factory hammerlock.vault.factory:app_from_env``."""

from __future__ import annotations

from fastapi import FastAPI

from hammerlock.logs import configure_logging
from hammerlock.settings import Settings
from hammerlock.vault.container import build_vault_app

__all__ = ["app_from_env"]


def app_from_env() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return build_vault_app(settings)
