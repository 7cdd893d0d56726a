"""How a job fails: the ``(code, message)`` an exception becomes, and the runtime limit
that ends a job ``failed`` with ``timeout`` (split from :mod:`worker.runner`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from service.core.errors import is_disk_full
from service.core.job_spec import parse_stored
from service.core.settings import Settings
from service.db.tables import JobRecord
from worker.build import JobFailure


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """The ``(code, message)`` a failed job shows for ``exc``.

    Codes: the :class:`JobFailure`'s own (e.g. ``data_unavailable`` when MNIST is missing);
    ``storage_full`` (ENOSPC/EDQUOT); ``out_of_memory``; an ``AdapterError``'s code;
    otherwise ``training_error``.
    """
    if isinstance(exc, JobFailure):
        return exc.code, exc.message
    if is_disk_full(exc):
        return "storage_full", f"No space left in the artifact directory: {exc}"
    if type(exc).__name__ == "OutOfMemoryError":
        return "out_of_memory", f"Out of memory while training: {exc}"
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code.startswith("adapter_"):
        return code, str(exc)
    return "training_error", f"{type(exc).__name__}: {exc}"


def runtime_limit(job: JobRecord, settings: Settings) -> float | None:
    """The job's maximum runtime (s): the smaller of its spec's ``max_runtime_seconds`` and
    ``JOB_MAX_RUNTIME_SECONDS`` (:meth:`JobSpec.runtime_limit`); the setting alone for a
    config that no longer parses (that job fails ``invalid_config`` anyway)."""
    try:
        spec = parse_stored(job.kind, job.config)
    except ValueError:
        return settings.job_max_runtime_seconds
    return spec.runtime_limit(settings.job_max_runtime_seconds)


def runtime_deadline(job: JobRecord, max_seconds: float | None) -> float | None:
    """The ``time.monotonic()`` value at which ``job`` has run ``max_seconds`` since its
    first start (``started_at``, kept across resumes); None without a limit."""
    if max_seconds is None or job.started_at is None:
        return None
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return time.monotonic() + max_seconds - elapsed
