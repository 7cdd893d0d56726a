"""Probes: ``GET /health/live`` (the process answers) and ``GET /health/ready`` (database
reachable and migrated, broker reachable, artifact store writable; 503 naming which is
not). ``GET /health`` is the readiness probe under its old name.

Liveness checks nothing outside the process, so an orchestrator never restarts the API
because Postgres or Redis is briefly away; readiness takes it out of rotation instead."""

from __future__ import annotations

import logging
import os
import secrets

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.api.deps import SettingsDep
from service.api.errors import ErrorResponse, error_response
from service.api.strict import StrictRoute
from service.core.settings import Settings
from service.db.engine import get_engine
from service.db.migrations import require_migrated

router = APIRouter(tags=["health"], route_class=StrictRoute)
log = logging.getLogger(__name__)
BROKER_TIMEOUT_SECONDS = 2.0


class HealthOut(BaseModel):
    """Every check passed."""

    status: str = Field(description='"ok".')
    database: str = Field(description='"ok".')
    broker: str = Field(description='"ok".')
    artifact_store: str = Field(description='"ok".')


class LiveOut(BaseModel):
    """The process answers."""

    status: str = Field(description='"ok".')


def check_database(settings: Settings) -> str | None:
    """None when the database answers and is at the Alembic head, else what is wrong."""
    try:
        require_migrated(get_engine(settings.database_url))
    except Exception as exc:  # any driver error means "unreachable"
        return f"database: {exc}"
    return None


def check_broker(settings: Settings) -> str | None:
    """None when a broker connection opens within ~2 s, else what is wrong."""
    from service.jobs.queue import get_celery

    try:
        with get_celery(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
            conn.default_channel  # noqa: B018 (opens the channel: SQL transport connects here)
    except Exception as exc:  # transport-specific errors
        return f"broker: {exc}"
    return None


def check_artifact_store(settings: Settings) -> str | None:
    """None when ``ARTIFACT_DIR`` exists (created if missing) and takes a file, else why."""
    probe = settings.artifact_dir / f".ready-{secrets.token_hex(4)}"
    try:
        settings.artifact_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        os.unlink(probe)
    except OSError as exc:
        return f"artifact_store: {exc}"
    return None


@router.get("/health/live", response_model=LiveOut)
async def live() -> LiveOut:
    """200 whenever the process answers (checks nothing outside it)."""
    return LiveOut(status="ok")


@router.get("/health/ready", response_model=HealthOut, responses={503: {"model": ErrorResponse}})
def ready(settings: SettingsDep) -> HealthOut | JSONResponse:
    """200 when the database (migrated), the broker and the artifact store are reachable;
    503 ``unhealthy`` naming the ones that are not."""
    checks = (check_database, check_broker, check_artifact_store)
    problems = [p for check in checks if (p := check(settings))]
    if problems:
        # The details (hosts, users, driver messages) go to the log, not to this public endpoint.
        log.warning("readiness check failed: %s", "; ".join(problems))
        failing = " and ".join(p.split(":", 1)[0] for p in problems)
        return error_response(503, "unhealthy", f"Unreachable or not ready: {failing}.")
    return HealthOut(status="ok", database="ok", broker="ok", artifact_store="ok")


@router.get("/health", response_model=HealthOut, responses={503: {"model": ErrorResponse}})
def health(settings: SettingsDep) -> HealthOut | JSONResponse:
    """The readiness probe (``/health/ready``) under its first name."""
    return ready(settings)
