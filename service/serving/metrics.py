"""Prometheus metrics of serving: micro-batches, forward passes, caches, predictions.

Names follow ``lora_<what>_<unit>`` (``_seconds``, ``_bytes``, ``_total``). Label sets are
bounded: ``cache`` is ``model`` or ``adapter``; ``model`` and ``adapter`` on
``lora_predictions_total`` are record ids, at most ``METRICS_ADAPTER_LABELS`` distinct
adapters per process (the rest count as ``adapter="_other"``); a forgotten (deleted or
changed) record's series is removed from this process, and ``GET /metrics`` drops any
series whose record no longer exists (see :mod:`service.jobs.metrics_scrape`), which also
covers prometheus-client's multiprocess files, where series cannot be removed.

Everything is recorded by :class:`ServingMetrics`; with ``METRICS_ENABLED=false`` it
records nothing (each call returns at once).
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from service.core.metric_labels import NO_ADAPTER, OTHER_ADAPTER
from service.core.settings import Settings

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

BATCH_SIZE = Histogram(
    "lora_predict_batch_size", "Samples per /predict micro-batch.", buckets=BATCH_BUCKETS
)
FORWARD_SECONDS = Histogram(
    "lora_predict_forward_seconds",
    "Seconds of one forward pass (softmax included) over a micro-batch group.",
    buckets=FAST_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "lora_predict_queue_wait_seconds",
    "Seconds a /predict request waited from arrival until its micro-batch started.",
    buckets=FAST_BUCKETS,
)
PREDICTIONS = Counter(
    "lora_predictions_total", "Samples predicted, by base model and adapter.", ["model", "adapter"]
)
CACHE_HITS = Counter("lora_cache_hits_total", "Cache lookups that found the value.", ["cache"])
CACHE_MISSES = Counter("lora_cache_misses_total", "Cache lookups that had to load.", ["cache"])
CACHE_LOADS = Counter("lora_cache_loads_total", "Values loaded into a cache.", ["cache"])
CACHE_LOAD_SECONDS = Histogram(
    "lora_cache_load_seconds", "Seconds one cache load took.", ["cache"], buckets=FAST_BUCKETS
)
CACHE_EVICTIONS = Counter(
    "lora_cache_evictions_total", "Values dropped from a cache (LRU or forgotten).", ["cache"]
)
CACHE_RESIDENT = Gauge(
    "lora_cache_resident", "Values resident in a cache.", ["cache"], multiprocess_mode="livesum"
)
CACHE_RESIDENT_BYTES = Gauge(
    "lora_cache_resident_bytes",
    "Bytes of tensors resident in a cache.",
    ["cache"],
    multiprocess_mode="livesum",
)


class ServingMetrics:
    """What the executor and its caches record (no-ops when ``metrics_enabled`` is false).

    Args:
        settings: ``metrics_enabled`` and ``metrics_adapter_labels``.
    """

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.metrics_enabled
        self.max_adapters = settings.metrics_adapter_labels
        self._adapters: set[str] = set()
        self._series: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def adapter_label(self, adapter_id: str | None) -> str:
        """The ``adapter`` label for ``adapter_id``: the id while fewer than the cap are in
        use in this process, ``"none"`` for the base alone, else ``"_other"``."""
        if adapter_id is None:
            return NO_ADAPTER
        with self._lock:
            if adapter_id in self._adapters:
                return adapter_id
            if len(self._adapters) < self.max_adapters:
                self._adapters.add(adapter_id)
                return adapter_id
        return OTHER_ADAPTER

    def batch(self, samples: int, waits_s: list[float]) -> None:
        """One micro-batch of ``samples`` samples; ``waits_s``: each request's queue wait (s)."""
        if not self.enabled:
            return
        BATCH_SIZE.observe(samples)
        for wait in waits_s:
            QUEUE_WAIT_SECONDS.observe(wait)

    def forward(self, seconds: float) -> None:
        """One forward pass that took ``seconds``."""
        if self.enabled:
            FORWARD_SECONDS.observe(seconds)

    def predicted(self, model_id: str, adapter_id: str | None, samples: int) -> None:
        """``samples`` predictions answered by ``model_id`` (+ ``adapter_id``)."""
        if not self.enabled:
            return
        labels = (model_id, self.adapter_label(adapter_id))
        PREDICTIONS.labels(*labels).inc(samples)
        if labels not in self._series:
            with self._lock:
                self._series.add(labels)

    def forgotten(self, kind: str, record_id: str) -> None:
        """A model or adapter left serving: remove its ``lora_predictions_total`` series."""
        if not self.enabled:
            return
        position = 0 if kind == "model" else 1
        with self._lock:
            gone = {s for s in self._series if s[position] == record_id}
            self._series -= gone
            if kind == "adapter":
                self._adapters.discard(record_id)
        for labels in gone:
            try:
                PREDICTIONS.remove(*labels)
            except KeyError:
                pass

    def cache_hit(self, cache: str) -> None:
        """A lookup in ``cache`` found its value."""
        if self.enabled:
            CACHE_HITS.labels(cache).inc()

    def cache_miss(self, cache: str) -> None:
        """A lookup in ``cache`` had to load."""
        if self.enabled:
            CACHE_MISSES.labels(cache).inc()

    def cache_loaded(self, cache: str, seconds: float) -> None:
        """A value was loaded into ``cache`` in ``seconds``."""
        if self.enabled:
            CACHE_LOADS.labels(cache).inc()
            CACHE_LOAD_SECONDS.labels(cache).observe(seconds)

    def cache_evicted(self, cache: str, count: int = 1) -> None:
        """``count`` values left ``cache``."""
        if self.enabled and count:
            CACHE_EVICTIONS.labels(cache).inc(count)

    def cache_resident(self, cache: str, values: int, nbytes: int) -> None:
        """``cache`` now holds ``values`` values of ``nbytes`` bytes of tensors."""
        if self.enabled:
            CACHE_RESIDENT.labels(cache).set(values)
            CACHE_RESIDENT_BYTES.labels(cache).set(nbytes)
