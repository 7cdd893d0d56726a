"""``/jobs``: submit, list, read, cancel training jobs and read their metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse

from service.api.deps import SessionDep, SettingsDep
from service.api.errors import ErrorResponse
from service.api.pagination import PageDep
from service.api.schemas import JobOut, MetricsOut, Page, job_out, metrics_csv, metrics_out
from service.api.security import API_KEY_ID
from service.api.strict import StrictRoute
from service.core.job_spec import JobCreate
from service.core.vocab import JobKind, JobStatus
from service.db import job_records, metric_records
from service.jobs.queue import enqueue_job
from service.jobs.retention import delete_job
from service.jobs.submit import cancel_job, submit_job

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictRoute)
NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown job id."}}


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[!-~]+$",
        description="Client-chosen key (1-200 visible ASCII characters, e.g. a UUID). "
        "Repeating a request with the same key returns the job it created (200, header "
        "`Idempotent-Replayed: true`) instead of creating another; the same key with a "
        "different request is 409 `idempotency_key_reused`.",
    ),
]


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Idempotency-Key replay: the job created first."},
        404: {"model": ErrorResponse, "description": "Unknown base model."},
        409: {
            "model": ErrorResponse,
            "description": "Idempotency-Key already used for a different request.",
        },
        503: {"model": ErrorResponse, "description": "Broker unreachable, or database busy."},
    },
)
def create_job(
    body: Annotated[JobCreate, Body()],
    http_request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Submit a training job; answers 202 with the queued job and a ``Location`` header."""
    request = body.root
    job, replayed = submit_job(
        session,
        settings,
        spec=request.config,
        base_model_id=request.base_model_id,
        enqueue=enqueue_job,
        idempotency_key=idempotency_key,
        webhook_url=request.webhook_url,
        api_key_id=getattr(http_request.state, API_KEY_ID, None),
    )
    response.headers["Location"] = f"/jobs/{job.id}"
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job)


@router.get("", response_model=Page[JobOut])
def list_jobs(
    session: SessionDep,
    page: PageDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
) -> Page[JobOut]:
    """List jobs, newest first."""
    items, total = job_records.list_jobs(
        session, status=status, kind=kind, limit=page.limit, offset=page.offset
    )
    return Page[JobOut](
        items=[job_out(j) for j in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def read_job(job_id: str, session: SessionDep) -> JobOut:
    """One job: status, config with defaults, times, progress, result or error."""
    job = job_records.require_job(session, job_id)
    return job_out(job)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"model": ErrorResponse, "description": "Not finished."}},
)
def remove_job(job_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete a finished job with its checkpoints, events and metrics (409
    ``job_not_finished`` while queued or running); its model or adapter stays."""
    delete_job(session, settings, job_id)
    return Response(status_code=204)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={
        **NOT_FOUND,
        202: {"model": JobOut, "description": "Running: it stops at its next training step."},
        409: {"model": ErrorResponse, "description": "The job already succeeded or failed."},
    },
)
def cancel(job_id: str, response: Response, session: SessionDep) -> JobOut:
    """Cancel a job: 200 when it is ``cancelled`` now (it was queued), 202 when running."""
    job = cancel_job(session, job_id)
    if job.status == "running":
        response.status_code = 202
    return job_out(job)


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsOut,
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}}},
)
def read_metrics(
    job_id: str,
    session: SessionDep,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv.")] = "json",
) -> MetricsOut | PlainTextResponse:
    """Per-epoch metrics (readable while the job runs) and the final test metrics."""
    job = job_records.require_job(session, job_id)
    metrics = metrics_out(job, metric_records.job_metrics(session, job_id))
    if format == "csv":
        return PlainTextResponse(
            metrics_csv(metrics),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job_id}-metrics.csv"'},
        )
    return metrics
