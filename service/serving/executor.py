"""The predictor's thread: records, caches and one forward pass per base model per batch.

:meth:`BatchExecutor.run` takes one micro-batch (requests from many clients) and:

1. resolves the batch's records through :class:`service.serving.records.RecordCache`
   (one read of the database's record version per batch; the records themselves only
   when they changed or were never read): the database is the truth, so an adapter
   registered a moment ago is found, and a deleted one answers 404 and is forgotten by the
   caches (:meth:`BatchExecutor.forget`) even when it was deleted by another process;
2. takes the base networks and adapters from their LRU caches (:mod:`service.serving.cache`),
   loading what is missing (``models.checkpoint.load_model``, then
   ``models.multi_lora.enable_multi_lora``; ``models.adapter_io.load_adapter``, validated
   against the base);
3. runs ``MLP.forward(x, adapters=AdapterBatch(...))`` per base model under
   ``torch.inference_mode``: ``W x + b + scaling_i * B_i (A_i x)`` with each sample's own
   adapter (Hu et al. 2021, eq. 3); base weights are only read, never merged into. A batch
   needing more distinct adapters than the cache holds is split so that no pass holds more
   than ``adapter_cache_size`` adapters. The adapter products of a pass go through the
   model's :class:`models.multi_lora.AdapterBank` (the resident adapters pre-stacked,
   rebuilt only when a batch needs one it lacks): in float32 each row's own adapter
   gathered from it, two batched products per layer; in bf16 one grouped product over it;
   in ``SERVING_PRECISION`` bf16 (:mod:`models.precision`) the networks and adapters are
   cast to bfloat16 once, when loaded into the cache, and each batch's input once per
   pass; the logits are cast back to float32 before the softmax;
4. turns logits into probabilities (softmax) mapped through the record's ``classes`` (the
   adapter's when one is used): head output ``i`` means digit ``classes[i]``.

``POST /evaluate`` (:mod:`service.serving.evaluate`) resolves, loads and forwards through
the same methods, over the MNIST test images. Everything here runs on the predictor's
single thread.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from models.adapter_io import load_adapter
from models.checkpoint import load_model
from models.lora import AdapterWeights
from models.multi_lora import AdapterBank, AdapterBatch, enable_multi_lora
from models.precision import resolve_precision, torch_dtype
from service.core import store
from service.core.errors import ApiError, artifact_unavailable
from service.core.settings import Settings
from service.db.engine import get_engine, session_factory
from service.serving import invalidation
from service.serving.batch import (
    BatchItem,
    BatchStats,
    LoadedAdapter,
    LoadedModel,
    Prediction,
    Resolved,
    resolve_item,
)
from service.serving.cache import LRUCache
from service.serving.metrics import ServingMetrics
from service.serving.records import RecordCache

log = logging.getLogger(__name__)
V = TypeVar("V")


class BatchExecutor:
    """Runs micro-batches (and evaluations) for :class:`service.serving.predictor.Predictor`.

    Args:
        settings: uses ``database_url``, ``default_model_id``, ``max_adapter_bytes``,
            ``adapter_cache_size``, ``model_cache_size`` and ``serving_precision`` (resolved
            once, for the CPU, into ``precision``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics(settings)
        self.adapters: LRUCache[LoadedAdapter] = LRUCache(
            settings.adapter_cache_size, "adapter", self.metrics, lambda a: a.weights.nbytes
        )
        self.models: LRUCache[LoadedModel] = LRUCache(
            settings.model_cache_size, "model", self.metrics, _model_bytes
        )
        self.stats = BatchStats()
        self.precision = resolve_precision(settings.serving_precision, torch.device("cpu"))
        self.dtype = torch_dtype(self.precision)
        self.engine = get_engine(settings.database_url)
        self.records = RecordCache(
            self.engine, session_factory(settings.database_url), settings.default_model_id
        )
        self._banks: dict[str, AdapterBank] = {}
        invalidation.watch(self)

    def forget(self, kind: str, record_id: str, reason: str) -> bool:
        """Drop a model or adapter from its cache: the one way a record leaves serving
        (deleted here or elsewhere, or changed under the same id; see
        :mod:`service.serving.invalidation`). Thread-safe; True when it was resident."""
        cache = self.adapters if kind == "adapter" else self.models
        self.metrics.forgotten(kind, record_id)
        return cache.evict(record_id, f"evicted ({reason})")

    # ---------------------------------------------------------------- resolving records

    def resolve(self, items: Sequence[BatchItem]) -> list[Resolved | ApiError]:
        """Match each item against its records (:class:`service.serving.records.RecordCache`:
        one read of the record version, and the records only when not cached under it).

        Records that are gone are forgotten by the caches (:meth:`forget`).
        """
        records = self.records.read(
            {i.adapter_id for i in items if i.adapter_id},
            {i.model_id for i in items if i.model_id},
            any(i.model_id is None and not i.adapter_id for i in items),
        )
        for gone in records.gone_adapters:
            self.forget("adapter", gone, "record deleted")
        for gone in records.gone_models:
            self.forget("model", gone, "record deleted")
        return [
            resolve_item(i, records.adapters, records.models, records.default_id) for i in items
        ]

    # ---------------------------------------------------------------- loading

    def model(self, r: Resolved) -> LoadedModel:
        """The base network of ``r`` from the cache, loaded on a miss.

        Raises:
            ApiError: 503 ``artifact_unavailable`` when its files cannot be loaded.
        """

        def load() -> LoadedModel:
            try:
                model, meta = load_model(store.fetch(self.settings, r.model_path))
            except (OSError, ValueError) as exc:
                log.exception("cannot load model %s from %s", r.model_id, r.model_path)
                raise artifact_unavailable("model", r.model_id, exc) from exc
            if len(r.model_classes) != meta.config.n_classes:
                why = f"{len(r.model_classes)} classes for its head"
                raise artifact_unavailable("model", r.model_id, why)
            model.eval().requires_grad_(False).to(self.dtype)  # cast once, here
            loaded = LoadedModel(
                r.model_id, r.model_path, enable_multi_lora(model), r.model_classes, self.dtype
            )
            _freeze_heap()
            return loaded

        return self._cached(
            "model", self.models, r.model_id, lambda m: m.path == r.model_path, load
        )

    def adapter(self, r: Resolved, base: LoadedModel) -> LoadedAdapter | None:
        """The adapter of ``r`` (None when it has none) from the cache, loaded on a miss.

        Raises:
            ApiError: 503 ``artifact_unavailable`` when its files cannot be loaded.
        """
        if r.adapter is None:
            return None
        adapter_id, path, classes = r.adapter

        def load() -> LoadedAdapter:
            try:
                weights = load_adapter(
                    store.fetch(self.settings, path),
                    base.model.config,
                    max_bytes=self.settings.max_adapter_bytes,
                )
            except (OSError, ValueError) as exc:
                log.exception("cannot load adapter %s from %s", adapter_id, path)
                raise artifact_unavailable("adapter", adapter_id, exc) from exc
            if len(classes) != base.model.config.n_classes:
                why = f"{len(classes)} classes for the head"
                raise artifact_unavailable("adapter", adapter_id, why)
            if self.dtype != torch.float32:  # cast once, here, not per batch
                weights = AdapterWeights(
                    weights.config,
                    {k: v.to(self.dtype) for k, v in weights.A.items()},
                    {k: v.to(self.dtype) for k, v in weights.B.items()},
                )
            return LoadedAdapter(adapter_id, base.model_id, path, weights, classes)

        return self._cached(
            "adapter",
            self.adapters,
            adapter_id,
            lambda a: (a.path, a.base_model_id) == (path, base.model_id),
            load,
        )

    def _cached(
        self,
        kind: str,
        cache: LRUCache[V],
        key: str,
        current: Callable[[V], bool],
        load: Callable[[], V],
    ) -> V:
        """``cache``'s value for ``key`` when ``current`` says it still matches its record;
        else the stale one is forgotten and ``load()`` runs (once, under the cache's lock)."""
        cached = cache.get(key)
        if cached is not None and current(cached):
            return cached
        if cached is not None:
            self.forget(kind, key, "record changed")
        return cache.get_or_load(key, load)

    def bank(self, base: LoadedModel, needed: Sequence[AdapterWeights]) -> AdapterBank:
        """The pre-stacked adapters of ``base`` (:class:`models.multi_lora.AdapterBank`):
        every resident adapter of that model, so that a batch only builds its rows' positions
        in the stacks (or its row mask).

        Rebuilt (once, on this thread) when a batch needs an adapter the current bank lacks:
        one just loaded, or reloaded after a change (a new object). An evicted adapter's
        stacks stay in the bank until the next rebuild, so the bank holds at most about one
        cache's worth of adapters beyond what is resident. Banks of models no longer
        resident are dropped then.
        """
        bank = self._banks.get(base.model_id)
        if bank is not None and bank.holds(needed):
            return bank
        resident = [a.weights for a in self.adapters.values() if a.base_model_id == base.model_id]
        bank = AdapterBank([*resident, *needed])
        models = set(self.models.keys())
        self._banks = {k: v for k, v in self._banks.items() if k in models}
        self._banks[base.model_id] = bank
        return bank

    @staticmethod
    def forward(
        base: LoadedModel,
        x: torch.Tensor,
        per_sample: Sequence[Any],
        bank: AdapterBank | None = None,
    ) -> torch.Tensor:
        """Float32 logits (B, n_classes) of float32 ``x`` (B, 784), sample ``i`` with adapter
        weights ``per_sample[i]`` (None: the base alone), through ``MLP.forward`` in the
        dtype ``base.dtype`` (``x`` is cast to it, the logits back); ``bank``: pre-stacked
        adapters holding those of ``per_sample`` (see :meth:`bank`), optional."""
        with torch.inference_mode():
            adapters = AdapterBatch(per_sample, x.device, bank)
            return base.model(x.to(base.dtype), adapters=adapters).float()

    # ---------------------------------------------------------------- micro-batches

    def run(self, batch: Sequence[BatchItem]) -> list[list[Prediction] | ApiError]:
        """Resolve, load and forward one micro-batch.

        Args:
            batch: the requests, each float32 (n_i, 784) with its model and adapter ids.

        Returns:
            One entry per request, in order: its n_i predictions, or the ``ApiError`` that
            answers it (404 unknown or deleted record, 409 adapter of another model,
            503 unreadable artifact).
        """
        results: list[Any] = [None] * len(batch)
        resolved = self.resolve(batch)
        by_model: dict[str, list[int]] = {}
        for i, r in enumerate(resolved):
            if isinstance(r, ApiError):
                results[i] = r
            else:
                by_model.setdefault(r.model_id, []).append(i)
        for idxs in by_model.values():
            self._run_model_group(batch, resolved, idxs, results)  # type: ignore[arg-type]
        s = self.stats
        s.batches += 1
        n = sum(item.x.shape[0] for item in batch)
        s.samples += n
        s.largest_batch = max(s.largest_batch, n)
        return results

    def _run_model_group(
        self,
        batch: Sequence[BatchItem],
        resolved: Sequence[Resolved],
        idxs: list[int],
        results: list[Any],
    ) -> None:
        """Forward the items ``idxs`` (one base model) and fill ``results`` for them."""
        try:
            base = self.model(resolved[idxs[0]])
        except ApiError as exc:
            for i in idxs:
                results[i] = exc
            return
        # Split so that no forward pass holds more distinct adapters than the cache.
        distinct = list(dict.fromkeys(r.adapter[0] for i in idxs if (r := resolved[i]).adapter))
        cap = self.adapters.capacity
        chunks = [set(distinct[k : k + cap]) for k in range(0, len(distinct), cap)] or [set()]
        for c, chunk in enumerate(chunks):
            members = [
                i
                for i in idxs
                if (resolved[i].adapter and resolved[i].adapter[0] in chunk)
                or (c == 0 and not resolved[i].adapter)
            ]
            self._forward_items(base, batch, resolved, members, results)

    def _forward_items(
        self,
        base: LoadedModel,
        batch: Sequence[BatchItem],
        resolved: Sequence[Resolved],
        members: list[int],
        results: list[Any],
    ) -> None:
        """One forward pass over the samples of items ``members``."""
        xs: list[torch.Tensor] = []
        per_sample: list[AdapterWeights | None] = []
        run: list[int] = []
        for i in members:
            try:
                adapter = self.adapter(resolved[i], base)
            except ApiError as exc:
                results[i] = exc
                continue
            xs.append(batch[i].x)
            per_sample.extend([adapter.weights if adapter else None] * batch[i].x.shape[0])
            run.append(i)
        if not run:
            return
        used = list({id(w): w for w in per_sample if w is not None}.values())
        bank = self.bank(base, used) if used else None
        start = time.perf_counter()
        probs = torch.softmax(self.forward(base, torch.cat(xs), per_sample, bank), dim=1)
        top = probs.argmax(dim=1).tolist()
        rows = probs.tolist()
        seconds = time.perf_counter() - start
        self.stats.forward_passes += 1
        self.stats.forward_ms_total += seconds * 1000.0
        self.metrics.forward(seconds)
        offset = 0
        for i in run:
            r, n = resolved[i], batch[i].x.shape[0]
            keys = [str(c) for c in r.classes]
            results[i] = [
                Prediction(
                    digit=r.classes[top[k]],
                    probabilities=dict(zip(keys, rows[k], strict=True)),
                    model_id=base.model_id,
                    adapter_id=r.adapter[0] if r.adapter else None,
                )
                for k in range(offset, offset + n)
            ]
            self.metrics.predicted(base.model_id, r.adapter[0] if r.adapter else None, n)
            offset += n


def _model_bytes(loaded: LoadedModel) -> int:
    """Bytes of a loaded network's parameters and buffers."""
    tensors = (*loaded.model.parameters(), *loaded.model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


_heap_frozen = False


def _freeze_heap() -> None:
    """Once per process, when the first base model has loaded: move every object alive then
    (libraries, app, the model) to the GC's permanent generation (``gc.freeze``).

    Without it each full collection rescans the ~300k objects of torch, FastAPI, pydantic
    and SQLAlchemy; under load that ran about once a second and took 100-190 ms on
    2 cores, and was the whole p99 of ``/predict``. Afterwards full collections only scan
    objects created since. Process-wide; frozen objects are never collected as cycles, so
    it runs once, over what lives about as long as the process (the first model may later
    be evicted: its tensors' memory is still freed by reference counting).
    """
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "gc.freeze(): %d objects frozen in %.1f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - start) * 1000,
    )
