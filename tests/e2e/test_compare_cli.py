"""``lora-service compare`` against a real embedded stack (API + worker processes, SQLite).

A small run (1 epoch each, capped train splits, ranks 1 and 4, 2 seeds) checks the whole
path: one sweep through the REST API, the table with its ± columns, and the JSON / CSV / PNG
written to the results directory.
"""

from __future__ import annotations

import csv
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_stack import (
    API_KEY,
    Stack,
    embedded_backend,
    executable,
    free_port,
    mnist_dir,
    run_command,
    running_stack,
)

pytestmark = pytest.mark.e2e

LORA_PARAMS_PER_RANK = (784 + 1000) + (1000 + 2000) + (2000 + 5)  # r * (in + out) per linear


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not (mnist_dir() / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST raw files not found under {mnist_dir()}")
    root = tmp_path_factory.mktemp("compare")
    with running_stack(embedded_backend(root, mnist_dir()), root) as stack:
        yield stack


def test_compare_writes_table_json_csv_png(embedded_stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = [
        "lora-service", "compare", "--pretrain-epochs", "1", "--finetune-epochs", "1",
        "--ranks", "1", "4", "--max-train-samples", "3000", "--seeds", "2",
        "--results-dir", str(out),
    ]  # fmt: skip
    env = {**embedded_stack.env, "API_URL": embedded_stack.url, "API_KEY": API_KEY}
    assert executable(args)[0].endswith("lora-service")
    result = run_command(args, env, embedded_stack.root, timeout=900)
    assert result.returncode == 0, (
        result.stdout[-3000:] + result.stderr[-3000:] + embedded_stack.logs()
    )
    assert "Full fine-tuning vs LoRA" in result.stdout
    assert "acc 0-4 as served" in result.stdout and "±" in result.stdout
    assert "one base" in result.stdout  # what the intervals cover is said with them

    payload = json.loads((out / "results.json").read_text())
    rows = payload["rows"]
    assert [(r["method"], r["rank"]) for r in rows] == [
        ("full", None), ("full", None), ("lora", 1), ("lora", 4), ("ceiling", None)
    ]  # fmt: skip
    assert {r["learning_rate"] for r in rows if r["method"] == "full"} == {1e-5, 1e-4}
    sweep = payload["sweep"]
    base_params = sweep["base_parameters"]
    assert base_params == 2_797_005 and sweep["status"] == "succeeded"
    for row in rows:
        assert row["n"] == 2 and len(row["job_ids"]) == 2
        assert 0.0 <= row["test_accuracy_5_9"] <= 1.0 and row["test_accuracy_5_9_ci"] >= 0
        if row["method"] == "lora":
            assert row["trainable_parameters"] == row["rank"] * LORA_PARAMS_PER_RANK
            # The base is served unchanged: its 0-4 accuracy is the pre-training job's.
            assert row["served_accuracy_0_4"] == pytest.approx(
                sweep["bases"]["test_accuracy"]["mean"], abs=1e-6
            )
        elif row["method"] == "full":
            assert row["trainable_parameters"] == base_params
        else:  # the ceiling: the MLP pre-trained on 5-9, no base to serve
            assert row["served_accuracy_0_4"] is None
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    assert (out / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_starts_the_embedded_stack_runs_compare_and_stops_it(tmp_path: Path) -> None:
    """``lora-service demo`` from an empty folder: migrate, API + worker, compare, shut down."""
    if not (mnist_dir() / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST raw files not found under {mnist_dir()}")
    port = free_port()
    env = {
        "DATA_DIR": str(mnist_dir()),
        "MNIST_DOWNLOAD": "false",
        "PORT": str(port),
        "API_URL": f"http://127.0.0.1:{port}",
    }
    args = [
        "lora-service", "demo", "--pretrain-epochs", "1", "--finetune-epochs", "1",
        "--ranks", "2", "--max-train-samples", "1000", "--seeds", "1", "--results-dir", "out",
    ]  # fmt: skip
    result = run_command(args, env, tmp_path, timeout=600)
    log = (tmp_path / "var" / "demo-stack.log").read_text(errors="replace")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log[-3000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [(r["method"], r["rank"]) for r in rows] == [
        ("full", None), ("full", None), ("lora", 2), ("ceiling", None)
    ]  # fmt: skip
    assert (tmp_path / "var" / "lora.db").exists()  # the embedded default's database
    assert " ready." in log  # the worker ran under the demo
    with socket.socket() as sock:  # and the API is gone afterwards
        assert sock.connect_ex(("127.0.0.1", port)) != 0
