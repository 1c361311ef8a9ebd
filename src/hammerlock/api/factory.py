"""Entry point for uvicorn workers: ``uvicorn --factory hammerlock.api.factory:app_from_env``."""

from __future__ import annotations

from fastapi import FastAPI

from hammerlock.bootstrap import build_app
from hammerlock.logs import configure_logging
from hammerlock.settings import Settings

__all__ = ["app_from_env"]


def app_from_env() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return build_app(  # a served process (api/app.py)
        settings, freeze_gc=settings.gc_freeze, gc_gen0_threshold=settings.gc_gen0_threshold
    )
