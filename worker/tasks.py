"""The one Celery task: a thin wrapper that hands the job id to :func:`worker.runner.run_job`.

The task receives only the job id and re-reads everything from the database; its return
value is ignored (status lives in the ``jobs`` table, never in a Celery result).
"""

from __future__ import annotations

import os

from celery import Task, shared_task

from service.core.logs import job_context
from service.core.settings import get_settings
from service.jobs.queue import RUN_JOB_TASK
from worker import reaper, runner  # reaper: its worker_ready handler starts the reaper

__all__ = ["reaper", "run_job"]


@shared_task(name=RUN_JOB_TASK, bind=True, ignore_result=True, acks_late=True)
def run_job(self: Task, job_id: str) -> str:
    """Run training job ``job_id``; returns its final status (see ``runner.run_job``)."""
    worker_id = f"{self.request.hostname or 'worker'}:{os.getpid()}"
    with job_context(job_id):  # every log line of the job carries its id
        return runner.run_job(job_id, get_settings(), worker_id=worker_id)
