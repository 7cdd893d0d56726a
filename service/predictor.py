"""The predictor: base models loaded once, LoRA adapters hot-swapped per sample, micro-batched.

Request path (one process):

1. ``await predictor.predict(x, model_id, adapter_id)`` queues the request's samples and
   waits. A collector task on the event loop gathers queued requests into a micro-batch:
   it waits at most ``predict_batch_window_ms`` after the *oldest* queued request arrived
   (so under load, requests that queued during the previous forward pass go at once) or
   until ``predict_max_batch`` samples are queued, then hands the batch to the single
   worker thread and waits for it before gathering the next.
2. On the worker thread, :class:`service.batch_runner.BatchRunner` checks the records,
   loads what is missing (base models once, adapters through the LRU cache) and runs one
   ``forward_with_adapters`` pass per base model, each sample with its own adapter.
3. Each request's future gets its predictions or its 4xx/503 ``ApiError``.

A sample's answer does not depend on its batch neighbours: rows of a matrix product are
computed independently, so batched and alone agree to float32 rounding (tests: 1e-5).

Tail latency: after a base model loads, the heap is frozen (``gc.freeze``) so that full
garbage collections stop rescanning every library object (see
:func:`service.batch_runner._freeze_heap`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from service.adapter_cache import LRUCache
from service.batch_runner import BatchItem, BatchRunner, LoadedAdapter, Prediction
from service.config import Settings
from service.errors import ApiError

log = logging.getLogger(__name__)

__all__ = ["Prediction", "Predictor"]


@dataclass
class _Job(BatchItem):
    """A request waiting for a micro-batch; ``future`` gets its predictions."""

    future: asyncio.Future
    arrived: float  # loop.time(), seconds


class Predictor:
    """Serves predictions for base models and base + LoRA adapter, micro-batched.

    Created lazily by the API (``app.state.predictor``); bound to the event loop that first
    calls :meth:`predict`. Thread-safe: :meth:`evict` may be called from any thread.

    Args:
        settings: uses ``adapter_cache_size``, ``predict_batch_window_ms``,
            ``predict_max_batch``, ``predict_threads`` (torch's intra-op thread count, which
            is process-wide: set when the worker thread starts), and what
            :class:`BatchRunner` uses.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache: LRUCache[LoadedAdapter] = LRUCache(settings.adapter_cache_size, "adapter")
        self.runner = BatchRunner(settings, self.cache)
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="predict",
            initializer=torch.set_num_threads,
            initargs=(settings.predict_threads,),
        )
        self._pending: deque[_Job] = deque()
        self._pending_samples = 0
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    async def predict(
        self, x: torch.Tensor, model_id: str | None = None, adapter_id: str | None = None
    ) -> list[Prediction]:
        """Predict digits for ``x`` with ``model_id`` (+ ``adapter_id``), micro-batched.

        Args:
            x: float32 (N, 784), normalised like ``models.data.normalize_images``.
            model_id: base model; None means the adapter's base model, else the default
                (``settings.default_model_id`` or the newest pre-trained model).
            adapter_id: LoRA adapter applied to every sample, or None for the base alone.

        Returns:
            N predictions, in order.

        Raises:
            ApiError: 404 ``model_not_found`` / ``adapter_not_found`` / ``no_model``,
                409 ``adapter_model_mismatch``, 503 ``artifact_unavailable`` or
                ``shutting_down``.
        """
        if self.closed:
            raise ApiError(503, "shutting_down", "The predictor is shutting down.")
        loop = asyncio.get_running_loop()
        self._ensure_started(loop)
        job = _Job(x, model_id, adapter_id, loop.create_future(), loop.time())
        self._pending.append(job)
        self._pending_samples += x.shape[0]
        assert self._wakeup is not None
        self._wakeup.set()
        if self._pending_samples >= self.settings.predict_max_batch and self._full is not None:
            if not self._full.done():
                self._full.set_result(None)
        return await job.future

    def _ensure_started(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._collect(), name="predict-collector")

    async def _collect(self) -> None:
        """Gather queued jobs into micro-batches forever (until cancelled)."""
        loop = asyncio.get_running_loop()
        window_s = self.settings.predict_batch_window_ms / 1000.0
        assert self._wakeup is not None
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            remaining = self._pending[0].arrived + window_s - loop.time()
            if remaining > 0 and self._pending_samples < self.settings.predict_max_batch:
                self._full = loop.create_future()
                timer = loop.call_later(remaining, _resolve_future, self._full)
                await self._full
                timer.cancel()
                self._full = None
            batch = self._take_batch()
            try:
                results = await loop.run_in_executor(self._executor, self.runner.run, batch)
            except asyncio.CancelledError:
                _fail(batch, ApiError(503, "shutting_down", "The predictor is shutting down."))
                raise
            except Exception as exc:  # a bug, not bad input: answer 500 for this batch only
                log.exception("micro-batch failed")
                _fail(batch, exc)
                continue
            for job, result in zip(batch, results, strict=True):
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _take_batch(self) -> list[_Job]:
        """Pop queued jobs up to ``predict_max_batch`` samples (always at least one job)."""
        limit = self.settings.predict_max_batch
        batch: list[_Job] = []
        n = 0
        while self._pending and (not batch or n + self._pending[0].x.shape[0] <= limit):
            job = self._pending.popleft()
            n += job.x.shape[0]
            batch.append(job)
        self._pending_samples -= n
        return batch

    def evict(self, adapter_id: str) -> bool:
        """Drop an adapter from the cache (call after deleting its record). Thread-safe."""
        return self.cache.evict(adapter_id, "evicted (deleted)")

    def stats(self) -> dict[str, Any]:
        """Cache and batching counters (latencies in ms) for ``GET /predict/stats``."""
        s = self.runner.stats
        return {
            "adapter_cache": self.cache.stats().__dict__,
            "models_loaded": self.runner.models_loaded,
            "batches": s.batches,
            "samples": s.samples,
            "mean_batch": s.samples / s.batches if s.batches else 0.0,
            "largest_batch": s.largest_batch,
            "forward_passes": s.forward_passes,
            "mean_forward_ms": s.forward_ms_total / s.forward_passes if s.forward_passes else 0.0,
            "window_ms": self.settings.predict_batch_window_ms,
            "max_batch": self.settings.predict_max_batch,
        }

    async def aclose(self) -> None:
        """Stop the collector, fail queued requests with 503, release the worker thread."""
        self.closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        pending = list(self._pending)
        self._pending.clear()
        self._pending_samples = 0
        _fail(pending, ApiError(503, "shutting_down", "The predictor is shutting down."))
        self._executor.shutdown(wait=False, cancel_futures=True)


def _resolve_future(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(jobs: Sequence[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
