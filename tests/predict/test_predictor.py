"""The predictor without HTTP: LRU cache, record checks, micro-batching, logit equivalence."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from typing import Any

import pytest
import torch

from models.lora import apply_adapter
from models.multi_lora import forward_with_adapters
from service.core.errors import ApiError
from service.serving.cache import LRUCache
from service.serving.images import to_model_input
from service.serving.predictor import Predictor
from tests.predict.conftest import delete_adapter, insert_adapter, sample_pixels

# ---------------------------------------------------------------- LRU cache


def test_lru_evicts_least_recently_used_and_never_exceeds_capacity() -> None:
    cache: LRUCache[str] = LRUCache(2)
    for key in ("a", "b"):
        cache.get_or_load(key, lambda k=key: k.upper())
    assert cache.get("a") == "A"  # a is now most recent
    cache.get_or_load("c", lambda: "C")
    assert cache.keys() == ["a", "c"]
    s = cache.stats()
    assert (s.loads, s.evictions, s.peak_resident, s.capacity) == (3, 1, 2, 2)
    assert cache.evict("a") and not cache.evict("a") and cache.keys() == ["c"]


def test_lru_loads_a_key_once_under_contention() -> None:
    cache: LRUCache[int] = LRUCache(4)
    calls = []

    def slow_loader() -> int:
        calls.append(1)
        time.sleep(0.05)
        return 42

    threads = [
        threading.Thread(target=cache.get_or_load, args=("k", slow_loader)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.get("k") == 42


def test_lru_failed_load_caches_nothing() -> None:
    cache: LRUCache[int] = LRUCache(2)

    def broken() -> int:
        raise ValueError("bad artifact")

    with pytest.raises(ValueError):
        cache.get_or_load("k", broken)
    assert "k" not in cache and cache.stats().load_failures == 1


# ---------------------------------------------------------------- helpers


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def predict_all(predictor: Predictor, requests: list[tuple]) -> list[Any]:
    """Send ``(x, model_id, adapter_id)`` requests concurrently; exceptions are returned."""
    try:
        coros = [predictor.predict(x, m, a) for x, m, a in requests]
        return await asyncio.gather(*coros, return_exceptions=True)
    finally:
        await predictor.aclose()


def probs(prediction: Any) -> torch.Tensor:
    return torch.tensor(list(prediction.probabilities.values()))


@pytest.fixture
def images() -> torch.Tensor:
    return to_model_input(sample_pixels(6).numpy())


# ---------------------------------------------------------------- logits: every path agrees


def test_merged_unmerged_batched_and_served_logits_agree(registered, migrated, images) -> None:
    """Merged, unmerged (LoraLinear), per-sample alone, mixed batch and the served
    probabilities all give the same answer (1e-5); the base weights are never modified."""
    _, base, _ = registered.models["base"]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    choices = [None, "ad0", "ad1", "ad2", None, "ad1"]
    weights = [registered.adapters[a][1] if a else None for a in choices]

    reference = []
    for i, w in enumerate(weights):
        x = images[i : i + 1]
        alone = forward_with_adapters(base, x, [w])
        if w is None:
            with torch.inference_mode():
                reference.append(base(x))
            continue
        peft_like = apply_adapter(copy.deepcopy(base), w).eval()
        with torch.inference_mode():
            unmerged = peft_like(x)
            for layer in (peft_like.linear1, peft_like.linear2, peft_like.linear3):
                layer.merge()
            merged = peft_like(x)
        torch.testing.assert_close(unmerged, merged, atol=1e-5, rtol=0)
        torch.testing.assert_close(alone, unmerged, atol=1e-5, rtol=0)
        reference.append(unmerged)
    reference = torch.cat(reference)
    batched = forward_with_adapters(base, images, weights)
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)

    predictor = Predictor(migrated)
    served = run(
        predict_all(predictor, [(images[i : i + 1], "base", a) for i, a in enumerate(choices)])
    )
    got = torch.stack([probs(p[0]) for p in served])
    torch.testing.assert_close(got, torch.softmax(reference, 1), atol=1e-5, rtol=0)
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------- records and classes


def test_classes_defaults_and_errors(registered, migrated, images) -> None:
    x = images[:1]
    predictor = Predictor(migrated)
    base, adapted, implied, unknown_m, unknown_a, mismatch = run(
        predict_all(
            predictor,
            [
                (x, None, None),  # default: the newest pre-trained model ("base")
                (x, "base", "ad0"),
                (x, None, "ad_other"),  # model implied by the adapter
                (x, "nope", None),
                (x, "base", "nope"),
                (x, "base", "ad_other"),
            ],
        )
    )
    assert base[0].model_id == "base" and list(base[0].probabilities) == ["0", "1", "2", "3", "4"]
    assert adapted[0].adapter_id == "ad0" and list(adapted[0].probabilities) == list("56789")
    assert adapted[0].digit in (5, 6, 7, 8, 9)
    assert implied[0].model_id == "other"
    assert (unknown_m.status, unknown_m.code) == (404, "model_not_found")
    assert (unknown_a.status, unknown_a.code) == (404, "adapter_not_found")
    assert (mismatch.status, mismatch.code) == (409, "adapter_model_mismatch")


def test_no_model_registered_is_a_clear_404(migrated, images) -> None:
    (err,) = run(predict_all(Predictor(migrated), [(images[:1], None, None)]))
    assert isinstance(err, ApiError) and (err.status, err.code) == (404, "no_model")


def test_deleted_adapter_answers_404_and_leaves_the_cache(registered, migrated, images) -> None:
    async def scenario() -> None:
        predictor = Predictor(migrated)
        try:
            await predictor.predict(images[:1], "base", "ad3")
            await predictor.predict(images[:1], "base", "ad4")
            assert {"ad3", "ad4"} <= set(predictor.executor.adapters.keys())
            delete_adapter(migrated, "ad3")  # another process deleted it: no evict hook here
            with pytest.raises(ApiError) as err:
                await predictor.predict(images[:1], "base", "ad3")
            assert err.value.status == 404 and "ad3" not in predictor.executor.adapters.keys()
            delete_adapter(migrated, "ad4")
            assert predictor.evict("ad4")  # the hook
            assert "ad4" not in predictor.executor.adapters.keys()
            with pytest.raises(ApiError):
                await predictor.predict(images[:1], "base", "ad4")
        finally:
            await predictor.aclose()

    run(scenario())


def test_just_registered_adapter_is_usable_at_once(registered, migrated, images, tmp_path) -> None:
    from models.adapter_io import save_adapter
    from tests.predict.conftest import SMALL, make_adapter_weights

    async def scenario() -> None:
        predictor = Predictor(migrated)
        try:
            await predictor.predict(images[:1], "base", "ad0")  # predictor is running
            weights = make_adapter_weights(SMALL, seed=77)
            save_adapter(tmp_path / "fresh", weights)
            registered.adapters["fresh"] = (tmp_path / "fresh", weights, "base", (5, 6, 7, 8, 9))
            insert_adapter(migrated, registered, "fresh")
            (p,) = await predictor.predict(images[:1], "base", "fresh")
            want = torch.softmax(
                forward_with_adapters(registered.models["base"][1], images[:1], [weights]), 1
            )
            torch.testing.assert_close(probs(p), want[0], atol=1e-5, rtol=0)
        finally:
            registered.adapters.pop("fresh", None)
            await predictor.aclose()

    run(scenario())


def test_broken_artifact_is_503_not_500(registered, migrated, images, tmp_path) -> None:
    registered.adapters["broken"] = (tmp_path / "missing", None, "base", (5, 6, 7, 8, 9))
    try:
        from service.db.engine import session_scope
        from service.db.tables import AdapterRecord

        with session_scope(migrated.database_url) as s:
            s.add(
                AdapterRecord(
                    id="broken",
                    base_model_id="base",
                    r=4,
                    lora_alpha=8.0,
                    target_modules=["linear1"],
                    trainable_parameters=1,
                    classes=[5, 6, 7, 8, 9],
                    path=str(tmp_path / "missing"),
                )
            )
        (err,) = run(predict_all(Predictor(migrated), [(images[:1], "base", "broken")]))
        assert (err.status, err.code) == (503, "artifact_unavailable")
    finally:
        registered.adapters.pop("broken")


# ---------------------------------------------------------------- micro-batching


def test_concurrent_requests_are_batched_and_each_answer_is_its_own(registered, migrated, images):
    settings = migrated.model_copy(
        update={"predict_batch_window_ms": 30.0, "adapter_cache_size": 2}
    )
    choices = [None, "ad0", "ad1", "ad2", "ad3", "ad4"]  # more adapters than the cache holds
    alone = {}
    for c in choices:
        out = run(predict_all(Predictor(settings), [(images[:1], "base", c)]))
        alone[c] = probs(out[0][0])
    predictor = Predictor(settings)
    requests = [(images[:1], "base", choices[k % len(choices)]) for k in range(48)]
    results = run(predict_all(predictor, requests))
    for (_, _, choice), result in zip(requests, results, strict=True):
        assert result[0].adapter_id == choice
        torch.testing.assert_close(probs(result[0]), alone[choice], atol=1e-5, rtol=0)
    stats = predictor.stats()
    assert stats["batches"] < len(requests) and stats["largest_batch"] > 1
    assert stats["adapter_cache"]["peak_resident"] <= 2


def test_multi_image_requests_with_mixed_adapters_in_one_batch(
    registered, migrated, images, tmp_path
) -> None:
    """Requests of different sizes, different images and different adapters gathered into one
    micro-batch (plus one whose adapter cannot load): each gets its own rows, in order."""
    from service.db.engine import session_scope
    from service.db.tables import AdapterRecord

    registered.adapters["broken"] = (tmp_path / "missing", None, "base", (5, 6, 7, 8, 9))
    with session_scope(migrated.database_url) as s:
        s.add(
            AdapterRecord(
                id="broken", base_model_id="base", r=4, lora_alpha=8.0,
                target_modules=["linear1"], trainable_parameters=1, classes=[5, 6, 7, 8, 9],
                path=str(tmp_path / "missing"),
            )
        )  # fmt: skip
    try:
        settings = migrated.model_copy(update={"predict_batch_window_ms": 200.0})
        requests = [
            (images[0:3], "base", "ad0"),
            (images[3:4], "base", None),
            (images[1:2], "base", "broken"),
            (images[4:6], "base", "ad1"),
            (images[2:5], "base", "ad0"),
        ]
        alone = [
            run(predict_all(Predictor(settings), [req]))[0] if req[2] != "broken" else None
            for req in requests
        ]
        predictor = Predictor(settings)
        together = run(predict_all(predictor, requests))
        assert predictor.stats()["largest_batch"] >= 9  # the good requests shared one pass
        for req, got, want in zip(requests, together, alone, strict=True):
            if req[2] == "broken":
                assert isinstance(got, ApiError) and got.code == "artifact_unavailable"
                continue
            assert len(got) == len(req[0]) == len(want)
            for g, w in zip(got, want, strict=True):
                assert (g.adapter_id, g.digit) == (req[2], w.digit)
                torch.testing.assert_close(probs(g), probs(w), atol=1e-5, rtol=0)
    finally:
        registered.adapters.pop("broken")


def test_aclose_fails_queued_requests_with_503(registered, migrated, images) -> None:
    settings = migrated.model_copy(update={"predict_batch_window_ms": 500.0})

    async def scenario() -> None:
        predictor = Predictor(settings)
        task = asyncio.ensure_future(predictor.predict(images[:1], "base", None))
        await asyncio.sleep(0.05)
        await predictor.aclose()
        with pytest.raises(ApiError) as err:
            await task
        assert err.value.status == 503 and predictor.closed

    run(scenario())


def test_mixed_batches_share_one_adapter_bank_until_a_new_adapter_arrives(
    registered, migrated, images
) -> None:
    """The executor pre-stacks the resident adapters of a model once (AdapterBank): batches
    over those adapters reuse it, one needing another adapter rebuilds it with every
    resident adapter, and the answers equal the per-sample reference (1e-5)."""
    from service.serving.batch import BatchItem
    from service.serving.executor import BatchExecutor

    executor = BatchExecutor(migrated)
    _, base, _ = registered.models["base"]

    def served(choices: list[str]) -> torch.Tensor:
        items = [BatchItem(images[i : i + 1], "base", a) for i, a in enumerate(choices)]
        results = executor.run(items)
        return torch.stack([probs(r[0]) for r in results])

    def reference(choices: list[str]) -> torch.Tensor:
        weights = [registered.adapters[a][1] for a in choices]
        return torch.softmax(forward_with_adapters(base, images[: len(choices)], weights), 1)

    first = ["ad0", "ad1", "ad0", "ad1"]
    torch.testing.assert_close(served(first), reference(first), atol=1e-5, rtol=0)
    bank = executor._banks["base"]
    assert len(bank) == 2
    torch.testing.assert_close(served(["ad1", "ad0"]), reference(["ad1", "ad0"]), atol=1e-5, rtol=0)
    assert executor._banks["base"] is bank  # same adapters: no restacking
    more = ["ad2", "ad0", "ad3"]
    torch.testing.assert_close(served(more), reference(more), atol=1e-5, rtol=0)
    rebuilt = executor._banks["base"]
    assert rebuilt is not bank and len(rebuilt) == 4  # every resident adapter of "base"
