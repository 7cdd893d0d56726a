"""The worker-thread side of the predictor: records, artifacts and one forward pass per batch.

:class:`BatchRunner.run` takes one micro-batch (requests from many clients) and:

1. reads the batch's records with one query per table: the database is the truth, so an
   adapter registered a moment ago is found, and a deleted one answers 404 and leaves the
   cache even when no eviction hook ran in this process;
2. loads missing base models (once per id, ``models.checkpoint.load_model``) and adapters
   (through the LRU cache, ``models.adapter_io.load_adapter``, validated against the base);
3. runs ``models.lora.forward_with_adapters`` per base model under ``torch.inference_mode``:
   ``W x + b + scaling_i * B_i (A_i x)`` with each sample's own adapter (Hu et al. 2021,
   eq. 3); base weights are only read, never merged into or modified. A batch needing more
   distinct adapters than the cache holds is split so that no pass holds more than
   ``adapter_cache_size`` adapters;
4. turns logits into probabilities (softmax) mapped through the record's ``classes`` (the
   adapter's when one is used): head output ``i`` means digit ``classes[i]``.

Everything here runs on the predictor's single worker thread (never the event loop).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy import select

from models.adapter_io import load_adapter
from models.checkpoint import load_model
from models.classifier import MLP
from models.lora import AdapterWeights, forward_with_adapters
from service.adapter_cache import LRUCache
from service.config import Settings
from service.db.session import get_engine
from service.db.tables import AdapterRecord, ModelRecord
from service.errors import ApiError, artifact_unavailable, not_found

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A base network in memory (eval mode, frozen) and the record it came from."""

    model_id: str
    path: str
    model: MLP
    classes: tuple[int, ...]


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter's weights in memory and the record facts checked on every use."""

    adapter_id: str
    base_model_id: str
    path: str
    weights: AdapterWeights
    classes: tuple[int, ...]


@dataclass(frozen=True)
class Prediction:
    """One sample's answer. ``probabilities`` maps each digit (as a string) to [0, 1]."""

    digit: int
    probabilities: dict[str, float]
    model_id: str
    adapter_id: str | None


@dataclass
class BatchItem:
    """One request's samples: float32 ``x`` (n, 784) for ``model_id`` + ``adapter_id``."""

    x: torch.Tensor
    model_id: str | None
    adapter_id: str | None


@dataclass
class _Resolved:
    """A job's records, read from the database at batch time."""

    model_id: str
    model_path: str
    model_classes: tuple[int, ...]
    adapter: tuple[str, str, tuple[int, ...]] | None  # (id, path, classes)


@dataclass
class BatchStats:
    """Counters of the batches run so far; times in milliseconds."""

    batches: int = 0
    samples: int = 0
    largest_batch: int = 0
    forward_passes: int = 0
    forward_ms_total: float = 0.0


class BatchRunner:
    """Runs micro-batches for the :class:`service.predictor.Predictor` (worker thread).

    Args:
        settings: uses ``database_url``, ``default_model_id`` and ``max_adapter_bytes``.
        cache: the LRU cache of loaded adapters (shared with the predictor's ``evict``).
    """

    def __init__(self, settings: Settings, cache: LRUCache[LoadedAdapter]) -> None:
        self.settings = settings
        self.cache = cache
        self.stats = BatchStats()
        self._models: dict[str, LoadedModel] = {}
        self._models_lock = threading.Lock()

    @property
    def models_loaded(self) -> list[str]:
        """Ids of the base models in memory."""
        return sorted(self._models)

    def run(self, batch: Sequence[BatchItem]) -> list[list[Prediction] | ApiError]:
        """Resolve, load and forward one micro-batch.

        Args:
            batch: the requests, each float32 (n_i, 784) with its model and adapter ids.

        Returns:
            One entry per request, in order: its n_i predictions, or the ``ApiError`` that
            answers it (404 unknown or deleted record, 409 adapter of another model,
            503 unreadable artifact).
        """
        results: list[list[Prediction] | ApiError | None] = [None] * len(batch)
        resolved = self._resolve(batch)
        by_model: dict[str, list[int]] = {}
        for i, r in enumerate(resolved):
            if isinstance(r, ApiError):
                results[i] = r
            else:
                by_model.setdefault(r.model_id, []).append(i)
        with torch.inference_mode():
            for idxs in by_model.values():
                self._run_model_group(batch, resolved, idxs, results)  # type: ignore[arg-type]
        s = self.stats
        s.batches += 1
        n = sum(job.x.shape[0] for job in batch)
        s.samples += n
        s.largest_batch = max(s.largest_batch, n)
        return results  # type: ignore[return-value]

    def _resolve(self, batch: Sequence[BatchItem]) -> list[_Resolved | ApiError]:
        """Read the batch's model and adapter records (one query per table)."""
        adapter_ids = {j.adapter_id for j in batch if j.adapter_id}
        needs_default = any(j.model_id is None and not j.adapter_id for j in batch)
        with get_engine(self.settings.database_url).connect() as conn:
            adapters = {}
            if adapter_ids:
                rows = conn.execute(
                    select(
                        AdapterRecord.id,
                        AdapterRecord.base_model_id,
                        AdapterRecord.path,
                        AdapterRecord.classes,
                    ).where(AdapterRecord.id.in_(sorted(adapter_ids)))
                )
                adapters = {row.id: row for row in rows}
            default_id = self._default_model_id(conn) if needs_default else None
            model_ids = {j.model_id for j in batch if j.model_id}
            model_ids |= {a.base_model_id for a in adapters.values()}
            if default_id:
                model_ids.add(default_id)
            models = {}
            if model_ids:
                rows = conn.execute(
                    select(ModelRecord.id, ModelRecord.path, ModelRecord.classes).where(
                        ModelRecord.id.in_(sorted(model_ids))
                    )
                )
                models = {row.id: row for row in rows}
        for gone in adapter_ids - set(adapters):
            self.cache.evict(gone, "evicted (record deleted)")
        for gone in model_ids - set(models):
            with self._models_lock:
                if self._models.pop(gone, None) is not None:
                    log.info("model %s unloaded (record deleted)", gone)
        out: list[_Resolved | ApiError] = []
        for job in batch:
            out.append(_resolve_job(job, adapters, models, default_id))
        return out

    def _default_model_id(self, conn: Any) -> str | None:
        """``settings.default_model_id``, else the newest pre-trained model's id (or None)."""
        if self.settings.default_model_id:
            return self.settings.default_model_id
        stmt = (
            select(ModelRecord.id)
            .where(ModelRecord.kind == "pretrained")
            .order_by(ModelRecord.created_at.desc(), ModelRecord.id.desc())
            .limit(1)
        )
        return conn.execute(stmt).scalar_one_or_none()

    def _run_model_group(
        self,
        batch: Sequence[BatchItem],
        resolved: Sequence[_Resolved],
        idxs: list[int],
        results: list[Any],
    ) -> None:
        """Forward the jobs ``idxs`` (one base model) and fill ``results`` for them."""
        first = resolved[idxs[0]]
        try:
            base = self._model(first.model_id, first.model_path, first.model_classes)
        except ApiError as exc:
            for i in idxs:
                results[i] = exc
            return
        # Split so that no forward pass holds more distinct adapters than the cache.
        distinct = list(dict.fromkeys(r.adapter[0] for i in idxs if (r := resolved[i]).adapter))
        cap = self.cache.capacity
        chunks = [set(distinct[k : k + cap]) for k in range(0, len(distinct), cap)] or [set()]
        for c, chunk in enumerate(chunks):
            members = [
                i
                for i in idxs
                if (resolved[i].adapter and resolved[i].adapter[0] in chunk)
                or (c == 0 and not resolved[i].adapter)
            ]
            self._forward(base, batch, resolved, members, results)

    def _forward(
        self,
        base: LoadedModel,
        batch: Sequence[BatchItem],
        resolved: Sequence[_Resolved],
        members: list[int],
        results: list[Any],
    ) -> None:
        """One ``forward_with_adapters`` pass over the samples of jobs ``members``."""
        xs: list[torch.Tensor] = []
        per_sample: list[AdapterWeights | None] = []
        run: list[tuple[int, tuple[int, ...]]] = []  # (job index, classes)
        for i in members:
            r = resolved[i]
            adapter = None
            if r.adapter is not None:
                try:
                    adapter = self._adapter(r.adapter, base)
                except ApiError as exc:
                    results[i] = exc
                    continue
            n = batch[i].x.shape[0]
            xs.append(batch[i].x)
            per_sample.extend([adapter.weights if adapter else None] * n)
            run.append((i, adapter.classes if adapter else base.classes))
        if not run:
            return
        start = time.perf_counter()
        logits = forward_with_adapters(base.model, torch.cat(xs), per_sample)
        probs = torch.softmax(logits, dim=1)
        top = probs.argmax(dim=1).tolist()
        rows = probs.tolist()
        self.stats.forward_passes += 1
        self.stats.forward_ms_total += (time.perf_counter() - start) * 1000.0
        offset = 0
        for i, classes in run:
            n = batch[i].x.shape[0]
            adapter_id = resolved[i].adapter[0] if resolved[i].adapter else None
            keys = [str(c) for c in classes]
            results[i] = [
                Prediction(
                    digit=classes[top[k]],
                    probabilities=dict(zip(keys, rows[k], strict=True)),
                    model_id=base.model_id,
                    adapter_id=adapter_id,
                )
                for k in range(offset, offset + n)
            ]
            offset += n

    def _model(self, model_id: str, path: str, classes: tuple[int, ...]) -> LoadedModel:
        """The base model, loaded on first use (once per id; checked against its record)."""
        loaded = self._models.get(model_id)
        if loaded is not None and loaded.path == path:
            return loaded
        with self._models_lock:
            loaded = self._models.get(model_id)  # second check after acquiring
            if loaded is not None and loaded.path == path:
                return loaded
            start = time.perf_counter()
            try:
                model, meta = load_model(path)
            except (OSError, ValueError) as exc:
                log.exception("cannot load model %s from %s", model_id, path)
                raise artifact_unavailable("model", model_id, exc) from exc
            if len(classes) != meta.config.n_classes:
                why = f"{len(classes)} classes for its head"
                raise artifact_unavailable("model", model_id, why)
            model.eval().requires_grad_(False)
            loaded = LoadedModel(model_id, path, model, classes)
            self._models[model_id] = loaded
            _freeze_heap()
        log.info("model %s loaded in %.1f ms", model_id, (time.perf_counter() - start) * 1000)
        return loaded

    def _adapter(self, info: tuple[str, str, tuple[int, ...]], base: LoadedModel) -> LoadedAdapter:
        """The adapter ``(id, path, classes)`` from the LRU cache, loaded on a miss."""
        adapter_id, path, classes = info
        cached = self.cache.get(adapter_id)
        if cached is not None and (cached.path, cached.base_model_id) == (path, base.model_id):
            return cached
        if cached is not None:  # the record changed under the same id: reload
            self.cache.evict(adapter_id, "evicted (record changed)")

        def load() -> LoadedAdapter:
            try:
                weights = load_adapter(
                    path, base.model.config, max_bytes=self.settings.max_adapter_bytes
                )
            except (OSError, ValueError) as exc:
                log.exception("cannot load adapter %s from %s", adapter_id, path)
                raise artifact_unavailable("adapter", adapter_id, exc) from exc
            if len(classes) != base.model.config.n_classes:
                why = f"{len(classes)} classes for the head"
                raise artifact_unavailable("adapter", adapter_id, why)
            return LoadedAdapter(adapter_id, base.model_id, path, weights, classes)

        return self.cache.get_or_load(adapter_id, load)


def _resolve_job(
    job: BatchItem, adapters: dict[str, Any], models: dict[str, Any], default_id: str | None
) -> _Resolved | ApiError:
    """Match one job against the records read for its batch."""
    adapter = None
    model_id = job.model_id
    if job.adapter_id:
        row = adapters.get(job.adapter_id)
        if row is None:
            return not_found("adapter", job.adapter_id, "adapter_id")
        if model_id is not None and row.base_model_id != model_id:
            return ApiError(
                409,
                "adapter_model_mismatch",
                f"Adapter {job.adapter_id!r} belongs to model {row.base_model_id!r}, "
                f"not {model_id!r}.",
                "adapter_id",
            )
        model_id = row.base_model_id
        adapter = (row.id, row.path, tuple(row.classes))
    if model_id is None:
        model_id = default_id
        if model_id is None:
            return ApiError(
                404,
                "no_model",
                "No model_id given and no pre-trained model is registered yet "
                "(train one with POST /jobs).",
                "model_id",
            )
    row = models.get(model_id)
    if row is None:
        return not_found("model", model_id, "model_id")
    return _Resolved(model_id, row.path, tuple(row.classes), adapter)


_heap_frozen = False


def _freeze_heap() -> None:
    """Once per process, when the first base model has loaded: move every object alive then
    (libraries, app, the model) to the GC's permanent generation (``gc.freeze``).

    Without it each full collection rescans the ~300k objects of torch, FastAPI, pydantic
    and SQLAlchemy; under load that ran about once a second and took 100-190 ms on
    2 cores, and was the whole p99 of ``/predict``. Afterwards full collections only scan
    objects created since. Process-wide; frozen objects are never collected as cycles, so
    it runs once, over what lives as long as the process anyway.
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
