"""``/jobs/{id}/events`` (a page, or a live Server-Sent Events stream) and
``/jobs/{id}/checkpoints`` (list, publish)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.api.deps import SessionDep, SettingsDep
from service.api.errors import ErrorResponse
from service.api.schemas import (
    AdapterOut,
    CheckpointList,
    EventPage,
    ModelOut,
    adapter_out,
    checkpoint_out,
    event_out,
    model_out,
)
from service.api.strict import StrictRoute
from service.core.errors import ApiError
from service.db import checkpoint_records, event_records, job_records
from service.db.engine import session_factory
from service.db.tables import AdapterRecord
from service.jobs.checkpoints import find_published, publish_checkpoint
from service.jobs.follow import follow_events

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictRoute)
NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown job id."}}
EVENT_STREAM = "text/event-stream"
MAX_EVENTS = 1000


def _cursor(after: int | None, last_event_id: str | None) -> int:
    """The id to continue after: ``Last-Event-ID`` (a reconnecting stream) wins over
    ``after``.

    Raises:
        ApiError: 422 ``validation_error`` for a ``Last-Event-ID`` that is not an event id.
    """
    if last_event_id is None:
        return after or 0
    if not last_event_id.strip().isdigit():
        raise ApiError(
            422,
            "validation_error",
            f"Last-Event-ID must be an event id (an integer >= 0), got {last_event_id!r}.",
            "Last-Event-ID",
        )
    return int(last_event_id)


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    responses={
        **NOT_FOUND,
        200: {
            "content": {EVENT_STREAM: {}},
            "description": "A page of events (JSON), or with `Accept: text/event-stream` or "
            "`stream=true` a live stream: one SSE message per event (`id:` the event id, "
            "`event:` its type, `data:` the event as JSON), comment heartbeats, ending after "
            "the terminal status event.",
        },
    },
)
def read_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[
        int | None, Query(ge=0, description="Only events with a larger id (the cursor).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS, description="Events per page.")] = 100,
    stream: Annotated[bool, Query(description="Answer with a live SSE stream.")] = False,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume a stream after this event id (sent by reconnecting clients).",
        ),
    ] = None,
) -> EventPage | EventSourceResponse:
    """A job's typed events, oldest first: ``status``, ``metrics`` (one per epoch),
    ``checkpoint`` and ``message``; as a page, or followed live."""
    job_records.require_job(session, job_id)
    cursor = _cursor(after, last_event_id)
    if stream or EVENT_STREAM in request.headers.get("accept", ""):
        session.close()  # the stream reads with short sessions of its own
        return _event_stream(request, job_id, cursor, settings)
    records = event_records.list_events(session, job_id, after=cursor, limit=limit + 1)
    items = [event_out(r) for r in records[:limit]]
    return EventPage(
        items=items,
        has_more=len(records) > limit,
        next_after=items[-1].id if items else cursor,
    )


def _event_stream(request: Request, job_id: str, cursor: int, settings) -> EventSourceResponse:
    factory = session_factory(settings.database_url)

    async def messages():
        async for record in follow_events(
            factory,
            job_id,
            after=cursor,
            poll_seconds=settings.event_poll_seconds,
            disconnected=request.is_disconnected,
        ):
            body = event_out(record).model_dump_json()
            yield ServerSentEvent(data=body, id=str(record.seq), event=record.type)

    return EventSourceResponse(
        messages(),
        ping=settings.event_ping_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, responses=NOT_FOUND)
def read_checkpoints(job_id: str, session: SessionDep) -> CheckpointList:
    """The job's kept epochs (the last ``keep_checkpoints`` plus the best) with their
    validation metrics, and which one is its result."""
    job = job_records.require_job(session, job_id)
    records = checkpoint_records.list_checkpoints(session, job_id)
    return CheckpointList(
        items=[checkpoint_out(r, job, find_published(session, job, r.epoch)) for r in records]
    )


@router.post(
    "/{job_id}/checkpoints/{epoch}/publish",
    status_code=201,
    response_model=ModelOut | AdapterOut,
    responses={
        **NOT_FOUND,
        200: {"description": "Published before (or the job's result): the same record."},
        409: {"model": ErrorResponse, "description": "The job is not finished, or cancelled."},
        503: {"model": ErrorResponse, "description": "The checkpoint's files are unreadable."},
    },
)
def publish(
    job_id: str,
    epoch: Annotated[int, Path(ge=1, le=10**6)],
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
) -> ModelOut | AdapterOut:
    """Register a kept epoch of a finished job as a model or adapter (201), servable at
    once on ``/predict``; 200 with the same record when it was published already."""
    published = publish_checkpoint(session, settings, job_id, epoch)
    if not published.created:
        response.status_code = 200
    record = published.record
    return adapter_out(record) if isinstance(record, AdapterRecord) else model_out(record)
