"""Sweeps on a real stack (``lora-service api`` + two ``lora-service worker`` processes,
SQLite): a small sweep's aggregates equal the statistics recomputed from its child jobs
(through the public job, metrics, model, adapter and evaluate endpoints); cancel; the
Idempotency-Key; bad grids answer 4xx with the error envelope."""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_stack import (  # noqa: E402
    API_KEY,
    SMALL_NET,
    Stack,
    embedded_backend,
    mnist_dir,
    running_stack,
)

from service.client import Client, ServiceError  # noqa: E402

pytestmark = pytest.mark.e2e

MAX_JOBS = 12
T_975_DF1 = 12.706  # Student t, two-sided 95 %, 1 degree of freedom (NIST handbook 1.3.6.7.2)
SMALL = {"epochs": 1, "max_train_samples": 600}
PRETRAIN = {**SMALL, **SMALL_NET}
BASE_CLASSES = [0, 1, 2, 3, 4]
GRID = [
    {"kind": "finetune_lora", "name": "lora r=2", "config": {**SMALL, "r": 2}},
    {"kind": "finetune_full", "name": "full", "config": {**SMALL, "lr": 1e-3}},
    {"kind": "pretrain", "name": "ceiling", "config": PRETRAIN},
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not (mnist_dir() / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST raw files not found under {mnist_dir()}")
    root = tmp_path_factory.mktemp("sweeps")
    backend = embedded_backend(root, mnist_dir())
    backend.env["SWEEP_MAX_JOBS"] = str(MAX_JOBS)
    with running_stack(backend, root) as stack:
        stack.start_worker()  # two workers: the sweep's jobs run in parallel
        yield stack


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url, api_key=API_KEY, timeout=30) as c:
        yield c


def wait_sweep(client: Client, sweep_id: str, timeout: float = 150) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        sweep = client.sweep(sweep_id)
        if sweep["status"] in ("succeeded", "failed", "cancelled"):
            return sweep
        assert time.monotonic() < deadline, f"sweep still {sweep['status']}: {sweep['progress']}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def finished(client: Client) -> dict[str, Any]:
    """2 variants x 2 seeds (LoRA r=2, full fine-tune) from a base pre-trained by the sweep,
    plus the ceiling: 7 jobs of 1 epoch on 600 samples with 32-wide hidden layers."""
    body = {"pretrain": PRETRAIN, "variants": GRID, "seeds": [0, 1]}
    created = client.submit_sweep(body)
    assert created["status"] == "queued"
    assert created["progress"]["jobs_planned"] == 7
    assert created["progress"]["jobs_created"] == 3  # the base and the two ceiling runs
    return wait_sweep(client, created["id"])


def _check_stats(stats: dict[str, Any], values: list[float], tol: float = 1e-9) -> None:
    """n, mean, std and the 95 % interval recomputed from ``values`` (``tol``: /evaluate
    answers float32 accuracies, 1e-6 apart from the same count in float64)."""
    assert stats["n"] == len(values) == 2
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = T_975_DF1 * sd / math.sqrt(2)
    expected = {"mean": mean, "std": sd, "ci_low": mean - half, "ci_high": mean + half}
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=0, abs=tol * (1 + T_975_DF1)), (key, stats)
    assert sorted(stats["values"]) == pytest.approx(sorted(values), abs=tol)


def test_small_sweep_aggregates_equal_its_jobs(client: Client, finished: dict) -> None:
    sweep = finished
    assert sweep["status"] == "succeeded", sweep
    assert sweep["progress"]["jobs_created"] == 7 and sweep["progress"]["fraction"] == 1.0
    assert sweep["wall_seconds"] > 0
    assert "one base" in sweep["interval_note"]
    (base_job_id,) = sweep["bases"]["job_ids"]
    base_id = client.jobs.get(base_job_id)["result"]["model_id"]
    assert sweep["base_model_ids"] == [base_id]
    base = client.models.get(base_id)
    assert sweep["base_parameters"] == base["n_parameters"]
    listed = {j["id"] for j in client.jobs.list(limit=50)["items"] if j["sweep_id"] == sweep["id"]}
    assert listed == {j["id"] for j in sweep["jobs"]}

    rows = {v["name"]: v for v in sweep["variants"]}
    for name in ("lora r=2", "full", "ceiling"):
        row = rows[name]
        assert len(row["job_ids"]) == 2
        jobs = [client.jobs.get(j) for j in row["job_ids"]]
        assert sorted(j["config"]["seed"] for j in jobs) == [0, 1]
        metrics = [client.jobs.metrics(j["id"]) for j in jobs]
        _check_stats(row["test_accuracy"], [j["result"]["test_accuracy"] for j in jobs])
        _check_stats(row["train_seconds"], [m["test"]["train_seconds"] for m in metrics])
        selected = [
            next(e for e in m["epochs"] if e["epoch"] == j["result"]["selected_epoch"])
            for m, j in zip(metrics, jobs, strict=True)
        ]
        _check_stats(row["val_accuracy"], [e["val_accuracy"] for e in selected])
        if name == "ceiling":
            assert row["ceiling"] and row["base_accuracy"]["n"] == 0
            assert all(j["base_model_id"] is None and j["config"]["classes"] == [5, 6, 7, 8, 9]
                       for j in jobs)  # fmt: skip
            continue
        assert all(j["base_model_id"] == base_id for j in jobs)
        # accuracy on the base's digits as served, measured independently by /evaluate
        if name == "full":
            served = [
                client.evaluate(
                    j["result"]["model_id"], test_digits=BASE_CLASSES, classes=BASE_CLASSES
                )["accuracy"]
                for j in jobs
            ]
            params = client.models.get(jobs[0]["result"]["model_id"])["n_parameters"]
        else:
            served = [client.evaluate(base_id, test_digits=BASE_CLASSES)["accuracy"]] * 2
            params = client.adapters.get(jobs[0]["result"]["adapter_id"])["trainable_parameters"]
        assert row["trainable_parameters"] == params
        assert row["percent_of_base"] == pytest.approx(100 * params / base["n_parameters"])
        if name == "full":
            _check_stats(row["base_accuracy"], served, tol=1e-6)
        else:  # LoRA never touches the base: both runs serve the same base
            assert row["base_accuracy"]["values"] == pytest.approx(served, abs=1e-6)
            assert row["base_accuracy"]["std"] == 0.0
    assert rows["lora r=2"]["trainable_parameters"] == 2 * (784 + 32 + 32 + 32 + 32 + 5)

    table = list(csv.DictReader(io.StringIO(client.sweep_csv(sweep["id"]))))
    assert [r["variant"] for r in table] == ["lora r=2", "full", "ceiling"]
    for line in table:
        row = rows[line["variant"]]
        assert float(line["test_accuracy_mean"]) == pytest.approx(row["test_accuracy"]["mean"])
        assert float(line["test_accuracy_ci_low"]) == pytest.approx(row["test_accuracy"]["ci_low"])
        assert "one base" in line["interval_over"] and int(line["n"]) == 2
    assert client.sweep_plot(sweep["id"], "png").startswith(b"\x89PNG")
    assert b"<svg" in client.sweep_plot(sweep["id"], "svg")[:500]


def test_cancel_cancels_every_job(client: Client, finished: dict) -> None:
    """A sweep whose base is still training: cancel ends it and creates no fine-tunes; a
    sweep from a given base: its queued and running fine-tunes all end cancelled."""
    long = {"epochs": 200, "max_train_samples": 2000, **SMALL_NET}
    pending = client.submit_sweep({"pretrain": long, "variants": GRID[:1], "seeds": [0, 1]})
    base_model = finished["base_model_ids"][0]
    lora = {"kind": "finetune_lora", "config": {"epochs": 200, "max_train_samples": 2000}}
    direct = client.submit_sweep({"base_model_id": base_model, "variants": [lora],
                                  "seeds": [0, 1, 2]})  # fmt: skip
    assert direct["progress"]["jobs_created"] == 3
    deadline = time.monotonic() + 60
    while client.sweep(pending["id"])["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for sweep_id in (pending["id"], direct["id"]):
        answer = client.cancel_sweep(sweep_id)
        assert answer["cancel_requested"] is True
    for sweep_id, created in ((pending["id"], 1), (direct["id"], 3)):
        final = wait_sweep(client, sweep_id, timeout=60)
        assert final["status"] == "cancelled"
        assert final["progress"]["jobs_created"] == created
        assert {j["status"] for j in final["jobs"]} == {"cancelled"}
    client.cancel_sweep(direct["id"])  # again: harmless
    with pytest.raises(ServiceError) as err:
        client.cancel_sweep("swp_nope")
    assert err.value.status == 404 and err.value.code == "sweep_not_found"


def test_idempotency_key(client: Client, finished: dict) -> None:
    base_model = finished["base_model_ids"][0]
    body = {"base_model_id": base_model, "variants": GRID[:1], "seeds": [5]}
    first = client.http.post("/sweeps", json=body, headers={"Idempotency-Key": "sweep-key-1"})
    assert first.status_code == 202 and first.headers["location"] == f"/sweeps/{first.json()['id']}"
    again = client.http.post(
        "/sweeps", json={**body, "seeds": [5]}, headers={"Idempotency-Key": "sweep-key-1"}
    )
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len(again.json()["jobs"]) == 1  # nothing new created
    other = client.http.post(
        "/sweeps", json={**body, "seeds": [6]}, headers={"Idempotency-Key": "sweep-key-1"}
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    client.cancel_sweep(first.json()["id"])


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"variants": []}, 422, "validation_error", "variants"),
        ({"variants": [{"kind": "finetune_lora", "config": {"rank": 4}}]}, 422,
         "validation_error", "variants.0.config.rank"),
        ({"variants": [{"kind": "finetune_lora", "confg": {}}]}, 422, "validation_error",
         "variants.0.confg"),
        ({"grid": []}, 422, "validation_error", "grid"),
        ({"variants": [{"kind": "finetune_lora", "config": {"seed": 3}}]}, 422,
         "validation_error", "variants.0.config.seed"),
        ({"variants": [{"kind": "finetune_lora", "config": {"r": 40}}]}, 422,
         "validation_error", "variants.0.config.r"),
        ({"seeds": list(range(MAX_JOBS + 1))}, 422, "sweep_too_large", "seeds"),
        ({"seeds": [1, 1]}, 422, "validation_error", None),
        ({"base_model_id": "mdl_nope", "pretrain": None}, 404, "model_not_found",
         "base_model_id"),
        ({"base_model_id": "mdl_nope"}, 422, "validation_error", None),
        ({"kind": "pretrain"}, 422, "validation_error", "kind"),
    ],
)  # fmt: skip
def test_bad_grids_are_4xx(
    client: Client, change: dict, status: int, code: str, param: str | None
) -> None:
    body = {"pretrain": PRETRAIN, "variants": GRID[:1], "seeds": [0], **change}
    body = {k: v for k, v in body.items() if v is not None}
    before = client.http.get("/sweeps").json()["total"]
    resp = client.http.post("/sweeps", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["message"], error
    if param is not None:
        assert error["param"] == param, error
    assert client.http.get("/sweeps").json()["total"] == before  # nothing half-created


def test_unknown_sweep_is_404(client: Client) -> None:
    for path in ("/sweeps/swp_nope", "/sweeps/swp_nope/plot.png"):
        resp = client.http.get(path)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "sweep_not_found"
    assert client.http.get("/sweeps/swp_nope/plot.gif").status_code == 422
