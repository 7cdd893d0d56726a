"""A thread-safe LRU cache of loaded LoRA adapters and base models (or any value), after
ray serve's ``multiplex.py``: an ``OrderedDict`` in recency order, a lock around it, a second check
after taking the load lock (another thread may have loaded the key meanwhile), and every
load and eviction logged with its latency.

Loads run outside the dictionary lock, so hits never wait for a slow load; loads are
serialised by one load lock, so at most one value beyond ``capacity`` is ever in flight and
a key is never loaded twice at once. Insertion and eviction happen under one acquisition of
the lock: ``len(cache)`` never exceeds ``capacity``, not even momentarily.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

V = TypeVar("V")


@dataclass
class CacheStats:
    """Counters of one cache; latencies in milliseconds."""

    capacity: int
    resident: list[str]
    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    peak_resident: int = 0
    last_load_ms: float | None = None
    max_load_ms: float | None = None
    total_load_ms: float = 0.0


@dataclass
class _Entry(Generic[V]):
    value: V
    loaded_at: float  # time.monotonic(), seconds
    load_ms: float
    nbytes: int = 0


class LRUCache(Generic[V]):
    """Keyed values loaded on first use, least recently used evicted beyond ``capacity``.

    Args:
        capacity: most resident values, >= 1.
        name: what the values are, for log lines ("adapter", "model") and the ``cache``
            label of its metrics.
        metrics: records hits, misses, loads, evictions and what is resident (optional).
        nbytes: the bytes a value holds, for ``lora_cache_resident_bytes`` (optional).

    Raises:
        ValueError: ``capacity`` < 1.
    """

    def __init__(
        self,
        capacity: int,
        name: str = "value",
        metrics: ServingMetrics | None = None,
        nbytes: Callable[[V], int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.name = name
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._stats = CacheStats(capacity=capacity, resident=[])
        self._metrics = metrics
        self._nbytes = nbytes
        self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[Hashable]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def values(self) -> list[V]:
        """Resident values, least recently used first (their recency is not changed)."""
        with self._lock:
            return [entry.value for entry in self._entries.values()]

    def get(self, key: Hashable) -> V | None:
        """The resident value for ``key`` (marked most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            self._stats.hits += 1
        if self._metrics is not None:
            self._metrics.cache_hit(self.name)
        return entry.value

    def get_or_load(self, key: Hashable, loader: Callable[[], V]) -> V:
        """The value for ``key``, calling ``loader()`` on a miss and evicting LRU entries.

        Args:
            key: cache key (an adapter or model id).
            loader: builds the value; runs outside the dictionary lock, under the load lock.

        Returns:
            The cached or freshly loaded value.

        Raises:
            Whatever ``loader`` raises; nothing is cached then.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._stats.hits += 1
            else:
                self._stats.misses += 1
        if self._metrics is not None:
            (self._metrics.cache_hit if entry else self._metrics.cache_miss)(self.name)
        if entry is not None:
            return entry.value
        with self._load_lock:
            with self._lock:  # second check: loaded by another thread while we waited
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    return entry.value
            start = time.perf_counter()
            try:
                value = loader()
            except BaseException:
                with self._lock:
                    self._stats.load_failures += 1
                raise
            load_ms = (time.perf_counter() - start) * 1000.0
            nbytes = self._nbytes(value) if self._nbytes else 0
            evicted = self._insert(key, _Entry(value, time.monotonic(), load_ms, nbytes))
        if self._metrics is not None:
            self._metrics.cache_loaded(self.name, load_ms / 1000.0)
            self._metrics.cache_evicted(self.name, len(evicted))
            self._report_resident()
        log.info("%s %s loaded in %.2f ms", self.name, key, load_ms)
        if evicted:
            self._drop(evicted, "evicted (least recently used)")
        return value

    def _insert(self, key: Hashable, entry: _Entry[V]) -> list[tuple[Hashable, _Entry[V]]]:
        """Insert and evict down to capacity under one lock acquisition; return the evicted."""
        evicted: list[tuple[Hashable, _Entry[V]]] = []
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._bytes += entry.nbytes
            while len(self._entries) > self.capacity:
                evicted.append(self._entries.popitem(last=False))
                self._bytes -= evicted[-1][1].nbytes
            s = self._stats
            s.loads += 1
            s.evictions += len(evicted)
            s.peak_resident = max(s.peak_resident, len(self._entries))
            s.last_load_ms = entry.load_ms
            s.max_load_ms = max(s.max_load_ms or 0.0, entry.load_ms)
            s.total_load_ms += entry.load_ms
        return evicted

    def evict(self, key: Hashable, reason: str = "evicted") -> bool:
        """Drop ``key`` if resident (e.g. its record was deleted). Returns whether it was."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._stats.evictions += 1
                self._bytes -= entry.nbytes
        if entry is None:
            return False
        if self._metrics is not None:
            self._metrics.cache_evicted(self.name)
            self._report_resident()
        pair = [(key, entry)]
        del entry
        self._drop(pair, reason)
        return True

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
        if self._metrics is not None:
            self._report_resident()

    def _report_resident(self) -> None:
        with self._lock:
            values, nbytes = len(self._entries), self._bytes
        assert self._metrics is not None
        self._metrics.cache_resident(self.name, values, nbytes)

    def stats(self) -> CacheStats:
        """A snapshot of the counters and the resident keys (LRU first)."""
        with self._lock:
            s = self._stats
            return CacheStats(**{**s.__dict__, "resident": [str(k) for k in self._entries]})

    def _drop(self, evicted: list[tuple[Hashable, _Entry[V]]], reason: str) -> None:
        """Log each evicted entry (age, load latency), then release them and log that latency.

        The values are freed here unless a running batch still holds them (it then frees
        them when it finishes).
        """
        now = time.monotonic()
        for key, entry in evicted:
            log.info(
                "%s %s %s after %.1f s resident (it loaded in %.2f ms)",
                self.name,
                key,
                reason,
                now - entry.loaded_at,
                entry.load_ms,
            )
        entry = None  # noqa: F841 (drop the loop's reference before timing the release)
        keys = [str(k) for k, _ in evicted]
        start = time.perf_counter()
        evicted.clear()
        log.info(
            "%s %s unloaded in %.3f ms",
            self.name,
            ",".join(keys),
            (time.perf_counter() - start) * 1000,
        )
