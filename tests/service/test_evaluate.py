"""POST /evaluate: test-set accuracy of a registered model (and adapter) on chosen digits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from svc_helpers import error_of

from models.adapter_io import save_adapter
from models.checkpoint import save_model
from models.classifier import MLP, MLPConfig
from models.lora import AdapterWeights, LoraConfig, inject_lora
from service.db import adapter_records, model_records
from service.db.engine import session_scope
from tests.conftest import mnist_dir

pytestmark = pytest.mark.skipif(
    not (mnist_dir() / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(),
    reason=f"MNIST test set not found under {mnist_dir()}",
)

SMALL = MLPConfig(hidden1=16, hidden2=16, n_classes=2)


def _register(settings, tmp: Path, model_id: str, adapter_id: str | None = None) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = MLP(SMALL)
    save_model(tmp / model_id, model, classes=(0, 1))
    with session_scope(settings.database_url) as s:
        model_records.register_model(
            s, model_id=model_id, kind="pretrain", job_id=None, parent_id=None,
            classes=[0, 1], architecture=SMALL.to_dict(), n_parameters=1, test_accuracy=None,
            path=str(tmp / model_id),
        )  # fmt: skip
        if adapter_id:
            lora = LoraConfig(r=2, lora_alpha=4)
            inject_lora(model, lora)
            torch.nn.init.normal_(model.linear3.lora_B.weight)
            save_adapter(tmp / adapter_id, AdapterWeights.from_model(model))
            adapter_records.register_adapter(
                s, adapter_id=adapter_id, base_model_id=model_id, job_id=None, source="trained",
                lora_config=lora, trainable_parameters=1, classes=[7, 8],
                test_accuracy=None,
                path=str(tmp / adapter_id),
            )  # fmt: skip


def test_evaluate_counts_the_test_images_of_the_digits(client, migrated, tmp_path) -> None:
    _register(migrated, tmp_path, "m1", "a1")
    body = client.post("/evaluate", json={"model_id": "m1"}).json()
    assert body["n_samples"] == 980 + 1135  # MNIST test zeros and ones
    assert body["test_digits"] == [0, 1] and body["classes"] == [0, 1]
    wrong = sum(body["per_digit_errors"].values())
    assert body["accuracy"] == pytest.approx(1 - wrong / body["n_samples"])
    with_adapter = client.post("/evaluate", json={"model_id": "m1", "adapter_id": "a1"}).json()
    assert with_adapter["test_digits"] == [7, 8]  # served classes of the adapter
    assert with_adapter["n_samples"] == 1028 + 974


def test_evaluate_errors_use_the_envelope(client, migrated, tmp_path) -> None:
    _register(migrated, tmp_path, "m1", "a1")
    _register(migrated, tmp_path, "m2")
    error_of(client.post("/evaluate", json={"model_id": "nope"}), 404, "model_not_found")
    error_of(
        client.post("/evaluate", json={"model_id": "m1", "adapter_id": "nope"}),
        404, "adapter_not_found",
    )  # fmt: skip
    error_of(
        client.post("/evaluate", json={"model_id": "m2", "adapter_id": "a1"}),
        409, "adapter_model_mismatch", "adapter_id",
    )  # fmt: skip
    error_of(
        client.post("/evaluate", json={"model_id": "m1", "head_classes": [1, 2, 3]}),
        422, "validation_error", "classes",
    )  # fmt: skip
    error_of(
        client.post("/evaluate", json={"model_id": "m1", "digits": [3, 3]}),
        422, "validation_error",
    )  # fmt: skip
    shutil.rmtree(tmp_path / "a1")  # registered but its files are gone
    error_of(
        client.post("/evaluate", json={"model_id": "m1", "adapter_id": "a1"}),
        503, "artifact_unavailable",
    )  # fmt: skip
    shutil.rmtree(tmp_path / "m2")
    error_of(client.post("/evaluate", json={"model_id": "m2"}), 503, "artifact_unavailable")


def test_evaluate_goes_through_the_serving_caches(client, migrated, tmp_path) -> None:
    """/evaluate loads through the predictor's caches: /predict then finds them resident."""
    _register(migrated, tmp_path, "m1", "a1")
    assert client.post("/evaluate", json={"model_id": "m1", "adapter_id": "a1"}).status_code == 200
    stats = client.get("/predict/stats").json()
    assert stats["models_loaded"] == ["m1"] and stats["adapter_cache"]["resident"] == ["a1"]
    pixels = {"pixels": [[0] * 28] * 28, "adapter_id": "a1"}
    assert client.post("/predict", json=pixels).json()["adapter_id"] == "a1"
    again = client.get("/predict/stats").json()
    assert again["adapter_cache"]["loads"] == 1 and again["model_cache"]["loads"] == 1
