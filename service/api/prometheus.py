"""``GET /metrics``: the Prometheus endpoint (text exposition format 0.0.4).

Not to be confused with ``GET /jobs/{id}/metrics``, a job's per-epoch series. What it
answers is built by :func:`service.jobs.metrics_scrape.scrape` (this process's or every
API process's recorded metrics, plus the job gauges read from the database now).

Access: with ``METRICS_TOKEN`` set, it takes ``Authorization: Bearer <METRICS_TOKEN>``
(and no API key); otherwise it follows ``API_KEYS`` like every other endpoint.
``METRICS_ENABLED=false`` answers 404 ``metrics_disabled``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import SettingsDep
from service.api.errors import ErrorResponse, error_response
from service.api.strict import StrictRoute
from service.jobs.metrics_scrape import CONTENT_TYPE, scrape

router = APIRouter(tags=["metrics"], route_class=StrictRoute)
log = logging.getLogger(__name__)
METRICS_PATH = "/metrics"


def _token_ok(request: Request, token: str) -> bool:
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(supplied.strip().encode(), token.encode())


@router.get(
    METRICS_PATH,
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."},
        401: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus metrics of the API, serving and jobs (see the README's list)."""
    if not settings.metrics_enabled:
        return error_response(404, "metrics_disabled", "Metrics are off (METRICS_ENABLED).")
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if token and not _token_ok(request, token):
        return error_response(
            401,
            "unauthorized",
            "Send `Authorization: Bearer <METRICS_TOKEN>`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        body = await asyncio.to_thread(scrape, settings)
    except Exception:  # the database is away: the job gauges cannot be read
        log.warning("metrics scrape failed", exc_info=True)
        return error_response(503, "unhealthy", "Metrics unavailable: database unreachable.")
    return Response(body, media_type=CONTENT_TYPE)
