"""Queued job rows written straight to the database, for tests that run ``run_job`` in-process."""

from __future__ import annotations

from service.core.job_spec import SPECS
from service.core.settings import Settings
from service.db import job_records
from service.db.engine import session_scope


def queue_job_row(
    settings: Settings, kind: str = "pretrain", config: dict | None = None, base: str | None = None
) -> str:
    """Insert a ``queued`` job of ``kind`` whose config is the spec built from ``config`` (its
    defaults filled in, as ``POST /jobs`` stores it); returns the job id. No message is sent."""
    spec = SPECS[kind](**(config or {}))
    with session_scope(settings.database_url) as s:
        job = job_records.create_job(
            s, kind=kind, config=spec.model_dump(mode="json"), base_model_id=base,
            epochs=spec.epochs,
        )  # fmt: skip
        return job.id
