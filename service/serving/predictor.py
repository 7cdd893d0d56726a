"""The predictor: base models and LoRA adapters in LRU caches, adapters per sample, micro-batched.

Request path (one process):

1. ``await predictor.predict(x, model_id, adapter_id)`` queues the request's samples and
   waits. A collector task on the event loop gathers queued requests into a micro-batch:
   it waits at most ``predict_batch_window_ms`` after the *oldest* queued request arrived
   (so under load, requests that queued during the previous forward pass go at once) or
   until ``predict_max_batch`` samples are queued, then hands the batch to the predictor's
   single thread and waits for it before gathering the next.
2. On that thread, :class:`service.serving.executor.BatchExecutor` checks the records,
   takes base networks and adapters from their LRU caches (loading what is missing) and
   runs one ``MLP.forward`` per base model, each sample with its own adapter.
3. Each request's future gets its predictions or its 4xx/503 ``ApiError``.

``await predictor.evaluate(...)`` (``POST /evaluate``) runs on the same thread, through the
same caches and forward (:mod:`service.serving.evaluate`).

Cache invalidation has one path, :meth:`BatchExecutor.forget`
(:mod:`service.serving.invalidation`): every batch forgets the records it finds gone
(deleted by any process), and this process's committed adapter deletions are forgotten at
once. Nothing outside serving calls into the caches.

A sample's answer does not depend on its batch neighbours: rows of a matrix product are
computed independently, so batched and alone agree to float32 rounding (tests: 1e-5).

Tail latency: after a base model loads, the heap is frozen (``gc.freeze``) so that full
garbage collections stop rescanning every library object (see
:func:`service.serving.executor._freeze_heap`).
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

from service.core.errors import ApiError
from service.core.settings import Settings
from service.serving.batch import BatchItem, Prediction
from service.serving.evaluate import (
    EVAL_BATCH,
    Evaluation,
    mnist_test_images,
    plan_evaluation,
    predict_chunk,
    score,
)
from service.serving.executor import BatchExecutor

log = logging.getLogger(__name__)

__all__ = ["Prediction", "Predictor"]


@dataclass
class _Queued(BatchItem):
    """A request waiting for a micro-batch; ``future`` gets its predictions."""

    future: asyncio.Future
    arrived: float  # loop.time(), seconds


class Predictor:
    """Serves predictions for base models and base + LoRA adapter, micro-batched.

    Created lazily by the API (``app.state.predictor``); bound to the event loop that first
    calls :meth:`predict`. Thread-safe: :meth:`evict` may be called from any thread.
    Call :meth:`aclose` when done.

    Args:
        settings: uses ``adapter_cache_size``, ``predict_batch_window_ms``,
            ``predict_max_batch``, ``predict_threads`` (torch's intra-op thread count, which
            is process-wide: set when the predictor's thread starts), and what
            :class:`BatchExecutor` uses.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = BatchExecutor(settings)
        self._thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="predict",
            initializer=torch.set_num_threads,
            initargs=(settings.predict_threads,),
        )
        self._pending: deque[_Queued] = deque()
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
        queued = _Queued(x, model_id, adapter_id, loop.create_future(), loop.time())
        self._pending.append(queued)
        self._pending_samples += x.shape[0]
        assert self._wakeup is not None
        self._wakeup.set()
        if self._pending_samples >= self.settings.predict_max_batch and self._full is not None:
            if not self._full.done():
                self._full.set_result(None)
        return await queued.future

    def _ensure_started(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._collect(), name="predict-collector")

    async def _collect(self) -> None:
        """Gather queued requests into micro-batches forever (until cancelled)."""
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
            now = loop.time()
            self.executor.metrics.batch(
                sum(q.x.shape[0] for q in batch), [now - q.arrived for q in batch]
            )
            try:
                results = await loop.run_in_executor(self._thread, self.executor.run, batch)
            except asyncio.CancelledError:
                _fail(batch, ApiError(503, "shutting_down", "The predictor is shutting down."))
                raise
            except Exception as exc:  # a bug, not bad input: answer 500 for this batch only
                log.exception("micro-batch failed")
                _fail(batch, exc)
                continue
            for queued, result in zip(batch, results, strict=True):
                if queued.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    queued.future.set_exception(result)
                else:
                    queued.future.set_result(result)

    def _take_batch(self) -> list[_Queued]:
        """Pop queued requests up to ``predict_max_batch`` samples (always at least one queued)."""
        limit = self.settings.predict_max_batch
        batch: list[_Queued] = []
        n = 0
        while self._pending and (not batch or n + self._pending[0].x.shape[0] <= limit):
            queued = self._pending.popleft()
            n += queued.x.shape[0]
            batch.append(queued)
        self._pending_samples -= n
        return batch

    async def evaluate(
        self,
        model_id: str,
        adapter_id: str | None = None,
        test_digits: list[int] | None = None,
        classes: list[int] | None = None,
    ) -> Evaluation:
        """Test-set accuracy as served (:mod:`service.serving.evaluate`).

        Resolving and loading, then each chunk of test images, run as separate tasks on the
        predictor's thread, so ``/predict`` micro-batches interleave; the test set is read
        and the answer counted off that thread.

        Raises:
            ApiError: see :func:`service.serving.evaluate.plan_evaluation`; 503
                ``data_unavailable``; 503 ``shutting_down``.
        """
        if self.closed:
            raise ApiError(503, "shutting_down", "The predictor is shutting down.")
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(
            self._thread,
            lambda: plan_evaluation(
                self.executor,
                model_id=model_id,
                adapter_id=adapter_id,
                test_digits=test_digits,
                classes=classes,
            ),
        )
        x, y = await asyncio.to_thread(mnist_test_images, self.settings, plan.test_digits)
        chunks = [
            await loop.run_in_executor(self._thread, predict_chunk, plan, chunk)
            for chunk in x.split(EVAL_BATCH)
        ]
        predicted = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int64)
        return score(plan, predicted, y)

    def evict(self, adapter_id: str) -> bool:
        """Forget an adapter now (:meth:`BatchExecutor.forget`); True when it was resident."""
        return self.executor.forget("adapter", adapter_id, "evicted on request")

    def stats(self) -> dict[str, Any]:
        """Cache and batching counters (latencies in ms) for ``GET /predict/stats``."""
        s = self.executor.stats
        models = self.executor.models.stats()
        return {
            "adapter_cache": self.executor.adapters.stats().__dict__,
            "model_cache": models.__dict__,
            "models_loaded": sorted(models.resident),
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
        self._thread.shutdown(wait=False, cancel_futures=True)


def _resolve_future(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(requests: Sequence[_Queued], exc: BaseException) -> None:
    for queued in requests:
        if not queued.future.done():
            queued.future.set_exception(exc)
