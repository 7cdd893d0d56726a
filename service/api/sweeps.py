"""``/sweeps``: run a base and a grid of variants x seeds as jobs; read their statistics.

The logic is :mod:`service.jobs.sweeps` (plan: creating and cancelling the jobs; summary:
the figures; plot: the figure); the routes parse, call one function and shape the answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from service.api.deps import SessionDep, SettingsDep
from service.api.errors import ErrorResponse
from service.api.jobs import IdempotencyKey
from service.api.pagination import PageDep
from service.api.schemas import Page
from service.api.strict import StrictRoute
from service.core.sweep_spec import SweepCreate
from service.core.vocab import JobKind, JobStatus
from service.db import sweep_records
from service.jobs.queue import enqueue_job
from service.jobs.sweeps.plan import cancel_sweep, create_sweep
from service.jobs.sweeps.plot import FORMATS, render_plot
from service.jobs.sweeps.summary import get_summary, summary_csv, sweep_summary

router = APIRouter(prefix="/sweeps", tags=["sweeps"], route_class=StrictRoute)
NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown sweep id."}}


class StatsOut(BaseModel):
    """One figure over a variant's succeeded runs; ``None`` where undefined (no runs; one
    run has no std and no interval)."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None = Field(description="Lower end of the 95 % Student-t interval.")
    ci_high: float | None = Field(description="Upper end of the 95 % Student-t interval.")
    values: list[float] = Field(description="The runs' values.")


class SweepVariantOut(BaseModel):
    """One row of the grid and its statistics."""

    name: str
    kind: JobKind
    config: dict[str, Any] = Field(description="The variant's spec with defaults (no seed).")
    ceiling: bool = Field(description="A pretrain variant: the MLP from random weights.")
    jobs_planned: int
    trainable_parameters: int | None
    percent_of_base: float | None
    test_accuracy: StatsOut = Field(description="Test accuracy on the variant's own digits.")
    base_accuracy: StatsOut = Field(
        description="Accuracy on the base's test digits as served (LoRA: the base alone; full "
        "fine-tune: the fine-tuned network through the base's classes)."
    )
    val_accuracy: StatsOut = Field(description="Validation accuracy of the selected epoch.")
    train_seconds: StatsOut
    job_ids: list[str]


class SweepBasesOut(BaseModel):
    """The pre-trained bases (none when the sweep names ``base_model_id``)."""

    job_ids: list[str]
    test_accuracy: StatsOut
    base_accuracy: StatsOut
    val_accuracy: StatsOut
    train_seconds: StatsOut


class SweepJobOut(BaseModel):
    """One job of the sweep and its place in the grid (``variant`` null for a base)."""

    id: str
    kind: JobKind
    variant: str | None
    seed: int | None
    base: int | None
    status: JobStatus
    epoch: int
    epochs: int


class SweepProgressOut(BaseModel):
    """How far the sweep is, in jobs and epochs."""

    jobs_planned: int
    jobs_created: int
    jobs: dict[str, int] = Field(description="Jobs per status.")
    epochs_done: int
    epochs_planned: int
    fraction: float


class SweepOut(BaseModel):
    """A sweep: status, progress, per-variant statistics and its jobs."""

    id: str
    status: JobStatus
    created_at: datetime
    wall_seconds: float | None = Field(description="Creation to the last job's end (s).")
    cancel_requested: bool
    progress: SweepProgressOut
    request: dict[str, Any] = Field(description="The request as validated, defaults filled.")
    interval_note: str = Field(description="What the intervals cover.")
    base_model_ids: list[str]
    base_parameters: int | None
    bases: SweepBasesOut
    variants: list[SweepVariantOut]
    jobs: list[SweepJobOut]


@router.post(
    "",
    status_code=202,
    response_model=SweepOut,
    responses={
        200: {"model": SweepOut, "description": "Idempotency-Key replay: the sweep created first."},
        404: {"model": ErrorResponse, "description": "Unknown base model."},
        409: {"model": ErrorResponse, "description": "Idempotency-Key used for another request."},
        422: {"model": ErrorResponse, "description": "Bad grid, or more than SWEEP_MAX_JOBS."},
        503: {"model": ErrorResponse, "description": "Broker unreachable, or database busy."},
    },
)
def create(
    body: Annotated[SweepCreate, Body()],
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Create a sweep's jobs; 202 with the sweep and a ``Location`` header."""
    sweep, replayed = create_sweep(
        session, settings, request=body, enqueue=enqueue_job, idempotency_key=idempotency_key
    )
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return sweep_summary(session, sweep)


@router.get("", response_model=Page[SweepOut])
def list_all(session: SessionDep, page: PageDep) -> dict[str, Any]:
    """List sweeps, newest first."""
    items, total = sweep_records.list_sweeps(session, limit=page.limit, offset=page.offset)
    return {
        "items": [sweep_summary(session, s) for s in items],
        "total": total,
        "limit": page.limit,
        "offset": page.offset,
    }


@router.get(
    "/{sweep_id}",
    response_model=SweepOut,
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}}},
)
def read(
    sweep_id: str,
    session: SessionDep,
    format: Annotated[
        Literal["json", "csv"], Query(description="json, or csv: one line per variant.")
    ] = "json",
) -> Any:
    """Status, progress and per-variant n, mean, std and 95 % interval of each figure."""
    summary = get_summary(session, sweep_id)
    if format == "csv":
        return PlainTextResponse(
            summary_csv(summary),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{sweep_id}.csv"'},
        )
    return summary


@router.get(
    "/{sweep_id}/plot.{fmt}",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The figure."},
    },
)
def plot(sweep_id: str, fmt: Literal["png", "svg"], session: SessionDep) -> Response:
    """Test accuracy against trainable parameters (log x, 95 % intervals, the ceiling as a
    line, the seed notebook's figures as marks)."""
    summary = get_summary(session, sweep_id)
    return Response(render_plot(summary, fmt), media_type=FORMATS[fmt])


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepOut,
    responses=NOT_FOUND,
)
def cancel(sweep_id: str, session: SessionDep) -> dict[str, Any]:
    """Cancel every unfinished job of the sweep (queued at once, running at its next step)."""
    return sweep_summary(session, cancel_sweep(session, sweep_id))
