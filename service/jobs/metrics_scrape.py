"""What ``GET /metrics`` answers: this process's (or every API process's) metrics, the
job figures read from the database at scrape time, records that are gone left out.

:func:`scrape` builds one registry per scrape holding one :class:`ScrapeCollector`, which

* takes the recorded metrics: from this process (prometheus-client's default registry),
  or, with ``PROMETHEUS_MULTIPROC_DIR`` set, merged from every API process's files
  (prometheus-client's ``MultiProcessCollector``), so several API processes on one host
  answer one consistent scrape;
* drops every sample whose ``model`` or ``adapter`` label names a record that no longer
  exists (multiprocess files cannot forget a series; this keeps deleted adapters out);
* adds the job gauges, computed here from one set of queries
  (:func:`service.db.job_stats.job_stats`). They are never registered on a process-wide
  registry, so N API processes do not count the jobs N times:

  - ``lora_jobs{kind, status}``: jobs in each status (every pair, zeros included);
  - ``lora_jobs_oldest_queued_age_seconds{kind}``: age of the oldest queued job;
  - ``lora_jobs_running_heartbeat_age_seconds{kind}``: the oldest last heartbeat among
    running jobs (a value near LEASE_SECONDS means a worker is about to be presumed dead).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.core.metric_labels import NO_ADAPTER, OTHER_ADAPTER
from service.core.settings import Settings
from service.core.vocab import JOB_KINDS, JobStatus
from service.db.engine import session_factory
from service.db.job_stats import JobStats, job_stats, record_ids

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES: tuple[str, ...] = JobStatus.__args__  # type: ignore[attr-defined]


def job_families(stats: JobStats) -> list[Metric]:
    """The job gauges for ``stats`` (see the module docstring)."""
    jobs = GaugeMetricFamily("lora_jobs", "Jobs by kind and status.", labels=["kind", "status"])
    kinds = sorted({*JOB_KINDS, *(k for k, _ in stats.counts)})
    for kind in kinds:
        for status in STATUSES:
            jobs.add_metric([kind, status], stats.counts.get((kind, status), 0))
    queued = GaugeMetricFamily(
        "lora_jobs_oldest_queued_age_seconds",
        "Seconds since the oldest queued job was submitted.",
        labels=["kind"],
    )
    for kind, age in sorted(stats.oldest_queued_s.items()):
        queued.add_metric([kind], age)
    heartbeat = GaugeMetricFamily(
        "lora_jobs_running_heartbeat_age_seconds",
        "Seconds since the stalest running job's last heartbeat.",
        labels=["kind"],
    )
    for kind, age in sorted(stats.oldest_heartbeat_s.items()):
        heartbeat.add_metric([kind], age)
    return [jobs, queued, heartbeat]


def _keep(labels: dict[str, str], models: set[str], adapters: set[str]) -> bool:
    model = labels.get("model")
    if model is not None and model not in models:
        return False
    adapter = labels.get("adapter")
    return adapter is None or adapter in (NO_ADAPTER, OTHER_ADAPTER) or adapter in adapters


class ScrapeCollector:
    """The one collector of a scrape (see the module docstring).

    Args:
        settings: ``database_url`` and ``prometheus_multiproc_dir``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _recorded(self) -> Iterable[Metric]:
        directory = self.settings.prometheus_multiproc_dir
        if directory is not None and multiprocess_active():
            return MultiProcessCollector(None, path=str(directory)).collect()
        return REGISTRY.collect()

    def collect(self) -> Iterator[Metric]:
        """Recorded metrics (gone records dropped), then the job gauges."""
        with session_factory(self.settings.database_url)() as session:
            models, adapters = record_ids(session)
            stats = job_stats(session)
        for metric in self._recorded():
            if any("model" in s.labels or "adapter" in s.labels for s in metric.samples):
                metric.samples = [s for s in metric.samples if _keep(s.labels, models, adapters)]
            yield metric
        yield from job_families(stats)


def multiprocess_active() -> bool:
    """True when prometheus-client records into multiprocess files in this process (it
    reads ``PROMETHEUS_MULTIPROC_DIR`` from the process environment when imported; a value
    only in ``.env`` reaches the settings but not prometheus-client)."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


def check_multiprocess(settings: Settings) -> None:
    """Log an error when the settings name a multiprocess directory that prometheus-client
    does not use (then each process answers only its own metrics)."""
    if settings.prometheus_multiproc_dir is not None and not multiprocess_active():
        log.error(
            "PROMETHEUS_MULTIPROC_DIR=%s is in the settings but not in the process "
            "environment, so prometheus-client does not use it: /metrics shows this "
            "process only. Export it before starting the API.",
            settings.prometheus_multiproc_dir,
        )


def scrape(settings: Settings) -> bytes:
    """The Prometheus text exposition of everything above.

    Raises:
        sqlalchemy errors when the database is unreachable (the route answers 503).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(settings))  # type: ignore[arg-type]
    return generate_latest(registry)


def mark_process_dead(settings: Settings, pid: int) -> None:
    """Drop a stopped API process's live gauges from the multiprocess files (no-op when
    ``PROMETHEUS_MULTIPROC_DIR`` is unset)."""
    if settings.prometheus_multiproc_dir is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(settings.prometheus_multiproc_dir))
