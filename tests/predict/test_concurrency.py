"""Correctness under concurrency, over real HTTP (uvicorn in a thread, httpx clients).

- 200 concurrent requests interleaving the base model and two adapters on the same images:
  every answer equals that choice's answer when sent alone.
- A cache smaller than the adapters in use, while requests are in flight and new adapters
  are being registered: no answer ever comes from another adapter, and the number of
  resident adapters never exceeds the cache size.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from models.adapter_io import save_adapter
from models.multi_lora import forward_with_adapters
from service.serving.images import to_model_input
from tests.predict.conftest import (
    ADAPTER_CLASSES,
    SMALL,
    LiveServer,
    insert_adapter,
    make_adapter_weights,
    sample_pixels,
)

TOL = 1e-5


def assert_same(answer: dict[str, Any], reference: dict[str, float], what: str) -> None:
    assert answer["probabilities"].keys() == reference.keys(), what
    worst = max(abs(answer["probabilities"][k] - v) for k, v in reference.items())
    assert worst <= TOL, f"{what}: differs by {worst}"


def distance(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(x - y) for x, y in zip(a.values(), b.values(), strict=True))


def test_200_concurrent_requests_mixing_base_and_two_adapters(registered, make_app) -> None:
    images = sample_pixels(4, seed=3).tolist()
    choices = [None, "ad0", "ad2"]
    app = make_app()
    with LiveServer(app) as server:

        async def scenario() -> None:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as c:

                async def ask(image: int, choice: str | None) -> dict[str, Any]:
                    body = {"pixels": images[image], "model_id": "base", "adapter_id": choice}
                    r = await c.post("/predict", json=body)
                    assert r.status_code == 200, r.text
                    return r.json()

                alone = {(i, a): await ask(i, a) for i in range(4) for a in choices}
                for i in range(4):  # the three choices behave clearly differently
                    for a, b in itertools.combinations(choices, 2):
                        gap = distance(alone[i, a]["probabilities"], alone[i, b]["probabilities"])
                        assert gap > 1e-2, (i, a, b)
                # and answer different digits: the adapters do not just nudge probabilities
                assert all(alone[i, "ad0"]["digit"] != alone[i, "ad2"]["digit"] for i in range(4))

                plan = [(k % 4, choices[(k // 4 + k) % 3]) for k in range(200)]
                answers = await asyncio.gather(*(ask(i, a) for i, a in plan))
                for (i, a), answer in zip(plan, answers, strict=True):
                    assert answer["adapter_id"] == a and answer["model_id"] == "base"
                    assert answer["digit"] == alone[i, a]["digit"]
                    assert_same(answer, alone[i, a]["probabilities"], f"image {i} with {a}")
                assert {a for _, a in plan} == set(choices)

        asyncio.run(scenario())
        stats = app.state.predictor.stats()
    assert stats["largest_batch"] > 1, stats  # requests really were micro-batched


def test_small_cache_while_adapters_are_registered_mid_flight(
    registered, migrated, make_app, tmp_path: Path
) -> None:
    cache_size = 2
    pixels = sample_pixels(3, seed=5)
    x = to_model_input(pixels.numpy())
    base = registered.models["base"][1]

    fresh = [f"fresh{i}" for i in range(4)]
    for i, adapter_id in enumerate(fresh):
        weights = make_adapter_weights(SMALL, seed=500 + i)
        save_adapter(tmp_path / adapter_id, weights)
        registered.adapters[adapter_id] = (tmp_path / adapter_id, weights, "base", ADAPTER_CLASSES)
    preregistered = [f"ad{i}" for i in range(6)]
    every = preregistered + fresh
    reference = {}  # (image, adapter) -> probabilities, computed alone with models/
    for a in every:
        p = torch.softmax(forward_with_adapters(base, x, [registered.adapters[a][1]] * len(x)), 1)
        for i in range(len(x)):
            reference[i, a] = {str(c): float(v) for c, v in zip(ADAPTER_CLASSES, p[i], strict=True)}

    app = make_app(adapter_cache_size=cache_size, predict_batch_window_ms=3.0)
    resident_max = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal resident_max
        while not stop.is_set():
            predictor = getattr(app.state, "predictor", None)
            if predictor is not None:
                resident_max = max(resident_max, len(predictor.executor.adapters))
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        with LiveServer(app) as server:
            watcher.start()

            async def scenario() -> list[tuple[int, str, dict[str, Any]]]:
                available = list(preregistered)
                results: list[tuple[int, str, dict[str, Any]]] = []
                limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
                async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as c:

                    async def ask(k: int) -> None:
                        image, adapter_id = k % len(x), available[k % len(available)]
                        body = {"pixels": pixels[image].tolist(), "adapter_id": adapter_id}
                        r = await c.post("/predict", json=body)
                        assert r.status_code == 200, r.text
                        results.append((image, adapter_id, r.json()))

                    async def register() -> None:
                        for adapter_id in fresh:
                            await asyncio.sleep(0.15)
                            await asyncio.to_thread(
                                insert_adapter, migrated, registered, adapter_id
                            )
                            available.append(adapter_id)  # usable from now on, no restart

                    async def traffic() -> None:
                        for wave in range(12):
                            await asyncio.gather(*(ask(wave * 40 + k) for k in range(40)))

                    await asyncio.gather(register(), traffic())
                    await asyncio.gather(*(ask(k) for k in range(len(every) * 3)))
                return results

            results = asyncio.run(scenario())
            stats = app.state.predictor.stats()["adapter_cache"]
    finally:
        stop.set()
        for adapter_id in fresh:
            registered.adapters.pop(adapter_id, None)

    used = {a for _, a, _ in results}
    assert set(fresh) <= used, "the freshly registered adapters were served"
    for image, adapter_id, answer in results:
        assert answer["adapter_id"] == adapter_id
        assert_same(answer, reference[image, adapter_id], f"image {image} with {adapter_id}")
        others = [a for a in every if a != adapter_id]
        assert all(distance(answer["probabilities"], reference[image, o]) > 1e-3 for o in others)
    assert resident_max <= cache_size and stats["peak_resident"] <= cache_size
    assert stats["evictions"] > 0 and stats["loads"] > len(every)  # the cache really churned
