"""Log lines for every process: ``LOG_FORMAT=text`` (default) or ``json``, with context ids.

The ids a line carries live in :mod:`contextvars` (one set per request, job or process):

* ``request_id``: set by the API's request middleware (``X-Request-ID`` or generated);
* ``job_id`` and ``attempt``: set by the worker while it runs a job;
* ``worker``: the worker's id (``name@host:pid``), set once per worker process.

``json`` writes one object per line, ``{"time", "level", "logger", "message", "request_id",
"job_id", "attempt", "worker"}`` (ids that are unset are left out), plus ``exc_info`` when
an exception is logged; so a job's whole life is ``grep job_...`` across API and worker
logs. Values that look like credentials (``Bearer ...``) are masked in every line, in
either format; the settings never log their secrets (``SecretStr``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from service.core.settings import Settings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
attempt_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("attempt", default=None)
worker_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("worker", default=None)

CONTEXT_FIELDS = ("request_id", "job_id", "attempt", "worker")
_VARS = dict(
    zip(CONTEXT_FIELDS, (request_id_var, job_id_var, attempt_var, worker_var), strict=True)
)
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s,'\"]+")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


def mask_secrets(text: str) -> str:
    """``text`` with every ``Bearer <token>`` replaced by ``Bearer ***``."""
    return _BEARER.sub(r"\1***", text)


class ContextFilter(logging.Filter):
    """Adds the context ids to every record (``record.request_id`` ... and ``record.context``,
    a `` [request_id=... job_id=...]`` suffix for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        for name, var in _VARS.items():
            value = var.get()
            setattr(record, name, value)
            if value is not None:
                parts.append(f"{name}={value}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC, ms), level, logger, message, the
    context ids that are set, and ``exc_info`` (the formatted traceback) when present."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z"
        line: dict[str, Any] = {
            "time": stamp,
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class _MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def configure_logging(settings: Settings) -> None:
    """Route every logger (root, uvicorn's, Celery's) to one stderr handler in
    ``settings.log_format`` at ``settings.log_level``. Idempotent (replaces root handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_MaskingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request in CLI output


@contextmanager
def job_context(job_id: str, attempt: int | None = None) -> Iterator[None]:
    """Within the block, log lines carry ``job_id`` (and ``attempt``)."""
    tokens = (job_id_var.set(job_id), attempt_var.set(attempt))
    try:
        yield
    finally:
        attempt_var.reset(tokens[1])
        job_id_var.reset(tokens[0])
