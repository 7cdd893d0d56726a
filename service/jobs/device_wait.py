"""A ``"device": "cuda"`` job never waits forever: one still ``queued`` ``GPU_WAIT_SECONDS``
after its submission (no GPU worker took it) ends ``failed`` with code ``no_gpu_worker``.
Every worker's reaper pass runs :func:`fail_unclaimed_cuda_jobs` (:mod:`worker.reaper`)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from service.db.job_devices import queued_cuda_jobs_before
from service.db.tables import utcnow
from service.jobs import state as job_state

NO_GPU_WORKER = "no_gpu_worker"


def fail_unclaimed_cuda_jobs(session: Session, wait_seconds: float) -> list[str]:
    """End ``failed`` (``no_gpu_worker``) every queued ``cuda`` job older than
    ``wait_seconds``; returns their ids (a job claimed meanwhile is left alone)."""
    cutoff = utcnow() - timedelta(seconds=wait_seconds)
    failed = []
    for job_id in queued_cuda_jobs_before(session, cutoff):
        session.rollback()
        message = (
            f'No GPU worker took this "device": "cuda" job within {wait_seconds:g} s '
            "(GPU_WAIT_SECONDS); start a worker with WORKER_DEVICE=cuda, or submit it with "
            '"device": "auto".'
        )
        if job_state.mark_failed(session, job_id, code=NO_GPU_WORKER, message=message):
            failed.append(job_id)
    session.rollback()
    return failed
