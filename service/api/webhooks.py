"""``/jobs/{id}/webhooks``: a job's webhook messages and how their delivery went."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.api.deps import SessionDep
from service.api.errors import ErrorResponse
from service.api.strict import StrictRoute
from service.db import job_records, webhook_records
from service.db.tables import WebhookDeliveryRecord, as_utc
from service.db.webhook_records import DeliveryStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictRoute)


class WebhookDeliveryOut(BaseModel):
    """One webhook message of a job (one per terminal status) and its delivery so far."""

    id: str = Field(description="The message's `webhook-id` header (the same on every retry).")
    type: str = Field(description="job.succeeded, job.failed or job.cancelled.")
    url: str
    status: DeliveryStatus = Field(
        description="pending (being sent or retried), delivered (a 2xx answer) or failed "
        "(gave up: retry window over, or 410 Gone, or a private address)."
    )
    attempts: int = Field(description="POSTs made so far.")
    last_error: str | None = Field(description="Why the latest failed attempt failed.")
    next_attempt_at: datetime | None = Field(description="When a pending message is tried next.")
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any] = Field(description="The JSON body POSTed (and signed).")


class WebhookDeliveryList(BaseModel):
    """A job's webhook messages, oldest first."""

    items: list[WebhookDeliveryOut]


def _out(record: WebhookDeliveryRecord) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=record.id,
        type=str(record.payload.get("type", "")),
        url=record.url,
        status=record.status,  # type: ignore[arg-type]
        attempts=record.attempts,
        last_error=record.last_error,
        next_attempt_at=as_utc(record.next_attempt_at) if record.status == "pending" else None,
        created_at=as_utc(record.created_at),  # type: ignore[arg-type]
        delivered_at=as_utc(record.delivered_at),
        payload=record.payload,
    )


@router.get(
    "/{job_id}/webhooks",
    response_model=WebhookDeliveryList,
    responses={404: {"model": ErrorResponse, "description": "Unknown job id."}},
)
def read_webhooks(job_id: str, session: SessionDep) -> WebhookDeliveryList:
    """The job's webhook messages with their delivery status, attempts and last error."""
    job_records.require_job(session, job_id)
    return WebhookDeliveryList(
        items=[_out(r) for r in webhook_records.job_deliveries(session, job_id)]
    )
