"""A worker's own observability: its metrics port, its heartbeat file, its log context.

Started by the ``worker_init`` signal in every ``lora-service worker`` process:

* **Metrics** on ``WORKER_METRICS_PORT`` (prometheus-client's HTTP server, this process's
  registry). When the port is taken (several workers on one host), the next of
  :data:`PORT_TRIES` ports is tried; ``0`` takes any free port. The chosen port is logged
  and written into the heartbeat file. Metrics (labels bounded by job kinds and codes):

  - ``lora_worker_jobs_started_total{kind}``, ``lora_worker_jobs_finished_total{kind,
    status}``, ``lora_worker_jobs_failed_total{kind, code}``
  - ``lora_worker_epoch_seconds{kind}`` (histogram), ``lora_worker_samples_per_second{kind}``
    (the last epoch's)
  - ``lora_worker_device_info{device}`` (1), ``lora_worker_current_job{job_id, kind}`` (1
    while it runs; the series is removed when it ends), ``lora_worker_busy`` (0 or 1)
* **Heartbeat file** (``WORKER_HEARTBEAT_FILE``): a daemon thread rewrites it every
  ``WORKER_HEARTBEAT_FILE_SECONDS`` (JSON ``{time, pid, worker, job_id, metrics_port}``,
  written to a temporary name and renamed). It keeps doing so while a job trains (Celery's
  solo pool then answers no ``inspect ping``) and while the broker is away; it stops when
  the process is hung or dead. ``lora-service worker-health`` (:func:`check_heartbeat`)
  is the worker's liveness check. Broker reachability is readiness, not liveness.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from service.core.logs import worker_var
from service.core.settings import Settings

log = logging.getLogger(__name__)
PORT_TRIES = 32

JOBS_STARTED = Counter("lora_worker_jobs_started_total", "Job attempts started.", ["kind"])
JOBS_FINISHED = Counter(
    "lora_worker_jobs_finished_total", "Job attempts ended, by final status.", ["kind", "status"]
)
JOBS_FAILED = Counter(
    "lora_worker_jobs_failed_total", "Job attempts that failed, by error code.", ["kind", "code"]
)
EPOCH_SECONDS = Histogram(
    "lora_worker_epoch_seconds",
    "Seconds of one training epoch (validation included).",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
SAMPLES_PER_SECOND = Gauge(
    "lora_worker_samples_per_second", "Training samples per second, last epoch.", ["kind"]
)
DEVICE = Gauge("lora_worker_device_info", "The device this worker trains on.", ["device"])
CURRENT_JOB = Gauge("lora_worker_current_job", "The job running now (1).", ["job_id", "kind"])
BUSY = Gauge("lora_worker_busy", "1 while a job runs, else 0.")


@dataclass
class _State:
    worker: str = ""
    job_id: str | None = None
    metrics_port: int | None = None
    enabled: bool = True


_state = _State()


def serve_metrics(first_port: int) -> int:
    """Start the metrics HTTP server on ``first_port`` or the next free one (0: any free
    port); returns the port.

    Raises:
        OSError: none of the :data:`PORT_TRIES` ports could be bound.
    """
    ports = [0] if first_port == 0 else range(first_port, min(first_port + PORT_TRIES, 65536))
    error: OSError | None = None
    for port in ports:
        try:
            server, _thread = start_http_server(port)
        except OSError as exc:
            error = exc
            continue
        return int(server.server_port)
    raise OSError(f"no free metrics port in {first_port}..{first_port + PORT_TRIES - 1}: {error}")


def write_heartbeat(path: Path) -> None:
    """Write the heartbeat file now (temporary name, then rename)."""
    body = {
        "time": time.time(),
        "pid": os.getpid(),
        "worker": _state.worker,
        "job_id": _state.job_id,
        "metrics_port": _state.metrics_port,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def _beat(path: Path, interval: float) -> None:
    while True:
        try:
            write_heartbeat(path)
        except OSError:
            log.warning("cannot write heartbeat file %s", path, exc_info=True)
        time.sleep(interval)


def start(settings: Settings, worker: str) -> None:
    """Name this worker in the logs, serve its metrics and start its heartbeat thread."""
    _state.worker = worker
    _state.enabled = settings.metrics_enabled
    worker_var.set(worker)
    if settings.prometheus_multiproc_dir is not None:
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR is set for a worker: its metrics also land in the API's "
            "multiprocess files; set it for API processes only"
        )
    if settings.metrics_enabled:
        try:
            _state.metrics_port = serve_metrics(settings.worker_metrics_port)
            log.info("worker %s serves metrics on port %d", worker, _state.metrics_port)
        except OSError:
            log.exception("worker %s serves no metrics", worker)
        from models.training import pick_device

        DEVICE.labels(str(pick_device())).set(1)
        BUSY.set(0)
    path = settings.worker_heartbeat_file
    write_heartbeat(path)
    interval = settings.worker_heartbeat_file_seconds
    threading.Thread(target=_beat, args=(path, interval), name="heartbeat", daemon=True).start()
    log.info("worker %s writes its heartbeat to %s every %g s", worker, path, interval)


def job_started(job_id: str, kind: str) -> None:
    """A job attempt starts on this worker."""
    _state.job_id = job_id
    if _state.enabled:
        JOBS_STARTED.labels(kind).inc()
        CURRENT_JOB.labels(job_id, kind).set(1)
        BUSY.set(1)


def epoch_done(kind: str, metrics: Any) -> None:
    """An epoch ended; ``metrics`` has ``epoch_seconds`` and ``samples_per_second``."""
    if _state.enabled:
        EPOCH_SECONDS.labels(kind).observe(metrics.epoch_seconds)
        SAMPLES_PER_SECOND.labels(kind).set(metrics.samples_per_second)


def job_ended(job_id: str, kind: str, status: str, code: str | None = None) -> None:
    """A job attempt ended ``status`` (``code``: the failure's error code)."""
    _state.job_id = None
    if not _state.enabled:
        return
    JOBS_FINISHED.labels(kind, status).inc()
    if status == "failed":
        JOBS_FAILED.labels(kind, code or "unknown").inc()
    try:
        CURRENT_JOB.remove(job_id, kind)
    except KeyError:
        pass
    BUSY.set(0)


def check_heartbeat(path: Path, max_age: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, why): the heartbeat file exists, parses, and is at most ``max_age`` s old."""
    now = time.time() if now is None else now
    try:
        beat = json.loads(path.read_text())
        age = now - float(beat["time"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"no readable heartbeat at {path}: {exc}"
    what = f"worker {beat.get('worker')} (pid {beat.get('pid')}), job {beat.get('job_id')}"
    if age > max_age:
        return False, f"{what}: heartbeat {age:.1f} s old (> {max_age:g} s): hung or dead"
    return True, f"{what}: heartbeat {age:.1f} s old"
