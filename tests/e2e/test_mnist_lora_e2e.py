"""The project's reason to exist, end to end on real MNIST with the production configuration.

A real ``lora-service api`` process and a real ``lora-service worker`` process on Postgres and
Redis (both on 127.0.0.1): pre-train the full-size MLP for 1 epoch on digits 0-4, fine-tune a
LoRA adapter (r=4) for 2 epochs on 5-9, then ``POST /predict`` a real test-set image of a 7:
with the adapter it answers 7; the base alone answers a digit in 0-4.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2e_stack import (
    Stack,
    mnist_dir,
    postgres_redis_backend,
    running_stack,
    services_reachable,
    submit,
    watch,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture(scope="module")
def prod_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Postgres + Redis, migrated, with one API and one worker process."""
    if not services_reachable():
        pytest.skip("Postgres and Redis are not running on 127.0.0.1")
    if not (mnist_dir() / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST raw files not found under {mnist_dir()}")
    root = tmp_path_factory.mktemp("mnist_e2e")
    with running_stack(postgres_redis_backend(root, mnist_dir()), root) as stack:
        yield stack


def first_test_image(digit: int) -> list[list[int]]:
    """The first image of ``digit`` in the official MNIST test set, as 28 x 28 ints 0-255."""
    from torchvision.datasets import MNIST

    test = MNIST(root=str(mnist_dir()), train=False, download=False)
    index = int((test.targets == digit).nonzero()[0])
    return test.data[index].tolist()


def test_pretrain_lora_and_predict_a_seven(prod_stack: Stack) -> None:
    with prod_stack.client() as http:
        pre = submit(http, {"kind": "pretrain", "config": {"epochs": 1}})
        pre_final, _ = watch(http, pre["id"], timeout=600)
        assert pre_final["status"] == "succeeded", (pre_final, prod_stack.logs())
        assert pre_final["result"]["test_accuracy"] >= 0.95
        base_id = pre_final["result"]["model_id"]
        assert http.get(f"/models/{base_id}").json()["classes"] == [0, 1, 2, 3, 4]

        lora = submit(
            http,
            {
                "kind": "finetune_lora",
                "base_model_id": base_id,
                "config": {"r": 4, "lora_alpha": 8, "epochs": 2},
            },
        )
        lora_final, _ = watch(http, lora["id"], timeout=600)
        assert lora_final["status"] == "succeeded", (lora_final, prod_stack.logs())
        adapter_id = lora_final["result"]["adapter_id"]
        metrics = http.get(f"/jobs/{lora['id']}/metrics").json()
        assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]

        seven = first_test_image(7)
        with_adapter = _predict(http, seven, base_id, adapter_id)
        assert with_adapter["digit"] == 7, with_adapter
        assert set(with_adapter["probabilities"]) == {"5", "6", "7", "8", "9"}
        assert with_adapter["adapter_id"] == adapter_id

        base_only = _predict(http, seven, base_id, None)
        assert base_only["digit"] in {0, 1, 2, 3, 4}, base_only
        assert set(base_only["probabilities"]) == {"0", "1", "2", "3", "4"}
        assert base_only["adapter_id"] is None


def _predict(http: httpx.Client, pixels: list, model_id: str, adapter_id: str | None) -> dict:
    body = {"pixels": pixels, "model_id": model_id}
    if adapter_id is not None:
        body["adapter_id"] = adapter_id
    resp = http.post("/predict", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()
