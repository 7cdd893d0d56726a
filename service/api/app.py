"""The FastAPI application factory: routers, error envelope, security, start-up checks.

The only module that includes the routers; ``lora-service api`` serves ``create_app``.
Every router is built with ``route_class=StrictRoute`` (:mod:`service.api.strict`), so every
route refuses query parameters and form fields it does not declare (422
``unknown_parameter``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.adapters.orphans import sweep_orphans
from service.api import (
    adapters,
    evaluate,
    health,
    job_events,
    jobs,
    predict,
    prometheus,
    sweeps,
    webhooks,
)
from service.api import models as models_api
from service.api.dashboard import PUBLIC_PATHS, PUBLIC_PREFIXES, install_dashboard
from service.api.errors import ErrorResponse, install_error_handlers
from service.api.limits import RateLimitMiddleware
from service.api.observe import ObserveMiddleware
from service.api.security import install_security
from service.core.settings import Settings, get_settings
from service.db.engine import get_engine, session_factory
from service.db.migrations import require_migrated, upgrade
from service.jobs.metrics_scrape import check_multiprocess, mark_process_dead
from service.jobs.webhook_dispatcher import WebhookDispatcher

log = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. ``settings`` defaults to the process settings (environment).

    Start-up refuses an unmigrated database (``DatabaseNotMigrated``) unless
    ``AUTO_MIGRATE=true``, in which case it runs ``alembic upgrade head`` first.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            upgrade(settings.database_url)
        require_migrated(get_engine(settings.database_url))
        with session_factory(settings.database_url)() as session:
            sweep_orphans(settings, session)  # what a killed import left behind
        check_multiprocess(settings)
        dispatcher = WebhookDispatcher(settings)  # sends job webhooks (never the workers)
        dispatcher.start()
        yield
        await asyncio.to_thread(dispatcher.stop)
        predictor = getattr(app.state, "predictor", None)
        if predictor is not None:
            await predictor.aclose()
        mark_process_dead(settings, os.getpid())

    app = FastAPI(
        title="LoRA fine-tuning and serving service",
        version="0.1.0",
        description="Pre-train an MNIST MLP, fine-tune it fully or with LoRA adapters, and "
        "serve the base model with any adapter hot-swapped per request.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served offline by service.api.dashboard
        redoc_url=None,
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            404: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {
                "model": ErrorResponse,
                "description": "Invalid input, or a query parameter or form field the "
                "endpoint does not take (`unknown_parameter`).",
            },
        },
    )
    app.state.settings = settings
    install_error_handlers(app)
    if settings.rate_limit_per_second:  # inside the key check: it sees the key's id
        app.add_middleware(
            RateLimitMiddleware,
            rate=settings.rate_limit_per_second,
            burst=settings.rate_limit_burst,
        )
    install_security(app, settings, PUBLIC_PATHS, PUBLIC_PREFIXES)
    # outermost: the request id is set before any other middleware answers
    app.add_middleware(ObserveMiddleware, router_app=app, metrics=settings.metrics_enabled)
    # FastAPI tries routes in order (~1 us each): the serving hot path is matched first
    routers = (predict, health, jobs, job_events, webhooks, sweeps, models_api, adapters, evaluate)
    routers += (prometheus,)
    for module in routers:
        app.include_router(module.router)
    install_dashboard(app)
    return app
