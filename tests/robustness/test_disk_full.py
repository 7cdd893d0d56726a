"""A full disk under ``ARTIFACT_DIR``: a real, small tmpfs mounted by the test (needs root;
skipped with the reason otherwise), filled to a few KB free.

* a job whose checkpoint write hits ENOSPC ends ``failed`` with ``storage_full``; nothing it
  wrote stays (no temporary file, no checkpoint, no model); once space is freed the next job
  succeeds and its model loads;
* a job whose training and checkpoints fit but whose final model or adapter write hits
  ENOSPC (the disk is filled just before that write, at a fixed point of the runner) ends
  ``failed`` with ``storage_full``: no record registered, none of its files left, and the
  next job succeeds once space is freed;
* ``POST /adapters`` on the full disk answers 507 ``storage_full``; nothing is registered or
  left in the artifact directory.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from svc_helpers import SMALL_ARCH, add_model, error_of

from service.db import job_records
from service.db.engine import session_scope
from tests.job_rows import queue_job_row
from worker import runner

TINY = {"epochs": 2, "hidden1": 16, "hidden2": 16, "max_train_samples": 300}
FREE_BYTES = 16 * 1024  # less than one training checkpoint of the TINY network (~160 KB)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at ``tmp_path / "disk"`` (unmounted afterwards)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], timeout=10, check=False)


def _fill(disk: Path, leave: int = FREE_BYTES) -> Path:
    """Fill ``disk`` with one file until ``leave`` bytes stay free; returns the file."""
    stat = os.statvfs(disk)
    filler = disk / "filler.bin"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _job(settings, kind: str = "pretrain", base_model_id: str | None = None) -> str:  # noqa: ANN001
    config = TINY if kind == "pretrain" else {"epochs": 2, "max_train_samples": 300}
    return queue_job_row(settings, kind, config, base_model_id)


def test_job_on_a_full_disk_fails_storage_full_and_leaves_nothing(migrated, small_disk) -> None:
    settings = migrated.model_copy(update={"artifact_dir": small_disk})
    filler = _fill(small_disk)
    job_id = _job(settings)
    assert runner.run_job(job_id, settings, worker_id="test:1") == "failed"
    with session_scope(settings.database_url) as s:
        job = job_records.get_job(s, job_id)
        assert (job.status, job.error_code) == ("failed", "storage_full"), job.error_message
        assert job.result_model_id is None
    assert _files(small_disk) == ["filler.bin"]  # no half-written checkpoint or model

    filler.unlink()  # space freed: the next job succeeds
    job_id = _job(settings)
    assert runner.run_job(job_id, settings, worker_id="test:1") == "succeeded"
    from models.checkpoint import load_model
    from service.core.artifacts import model_dir

    with session_scope(settings.database_url) as s:
        model_id = job_records.get_job(s, job_id).result_model_id
    load_model(model_dir(settings, model_id))


def _artifact_loads(settings, job_id: str) -> str:  # noqa: ANN001
    """Load the succeeded job's model or adapter from its files; returns its id."""
    from models.adapter_io import load_adapter
    from models.checkpoint import load_model
    from models.classifier import MLPConfig
    from service.core.artifacts import adapter_dir, model_dir

    with session_scope(settings.database_url) as s:
        job = job_records.get_job(s, job_id)
        assert job.status == "succeeded", job.error_message
        model_id, adapter_id = job.result_model_id, job.result_adapter_id
    if adapter_id:  # on a TINY pre-trained base (5 classes)
        base = MLPConfig(hidden1=TINY["hidden1"], hidden2=TINY["hidden2"], n_classes=5)
        load_adapter(adapter_dir(settings, adapter_id), base)
        return adapter_id
    load_model(model_dir(settings, model_id))
    return model_id


@pytest.mark.parametrize("kind", ["pretrain", "finetune_lora"])
def test_disk_full_at_the_final_model_or_adapter_write(
    migrated,
    small_disk,
    monkeypatch,
    kind: str,  # noqa: ANN001
) -> None:
    from service.db import adapter_records, model_records

    settings = migrated.model_copy(update={"artifact_dir": small_disk})
    base_id = None
    if kind == "finetune_lora":  # a real base on the same disk (it stays)
        base_job = _job(settings)
        assert runner.run_job(base_job, settings, worker_id="test:1") == "succeeded"
        base_id = _artifact_loads(settings, base_job)
    before = _files(small_disk)
    seen: dict[str, list[str]] = {}
    write_artifact = runner.write_artifact

    def full_before_the_final_write(settings, job, spec, model):  # noqa: ANN001, ANN202
        seen["checkpoints"] = _files(small_disk / "checkpoints" / job.id)
        _fill(small_disk, leave=4 * 1024)  # less than the model's or adapter's weights
        return write_artifact(settings, job, spec, model)

    monkeypatch.setattr(runner, "write_artifact", full_before_the_final_write)
    job_id = _job(settings, kind, base_id)
    assert runner.run_job(job_id, settings, worker_id="test:1") == "failed"
    assert seen["checkpoints"], "the checkpoints did not fit: the test hit the wrong write"
    with session_scope(settings.database_url) as s:
        job = job_records.get_job(s, job_id)
        assert (job.status, job.error_code) == ("failed", "storage_full"), job.error_message
        assert job.epoch == job.epochs  # training finished: it was the final write
        assert job.result_model_id is None and job.result_adapter_id is None
        models = [m.id for m in model_records.list_models(s)[0]]
        assert models == ([base_id] if base_id else [])  # nothing registered
        assert adapter_records.list_adapters(s)[1] == 0
    assert _files(small_disk) == sorted([*before, "filler.bin"])  # none of its files left

    monkeypatch.undo()
    (small_disk / "filler.bin").unlink()  # space freed: the next job succeeds
    job_id = _job(settings, kind, base_id)
    assert runner.run_job(job_id, settings, worker_id="test:1") == "succeeded"
    _artifact_loads(settings, job_id)


def test_adapter_import_on_a_full_disk_is_507_and_leaves_nothing(migrated, small_disk) -> None:
    from fastapi.testclient import TestClient

    from models.adapter_io import save_adapter
    from models.classifier import MLP, MLPConfig
    from models.lora import AdapterWeights, LoraConfig
    from service.api.app import create_app

    settings = migrated.model_copy(update={"artifact_dir": small_disk})
    base_id = add_model(settings.database_url)
    import torch

    net = MLP(MLPConfig.from_dict(SMALL_ARCH))
    config = LoraConfig(r=4)
    A = {n: torch.randn(4, getattr(net, n).in_features) for n in config.target_modules}
    B = {n: torch.randn(getattr(net, n).out_features, 4) for n in config.target_modules}
    source = small_disk.parent / "adapter"
    save_adapter(source, AdapterWeights(config, A, B))
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream"))
             for p in sorted(source.iterdir())]  # fmt: skip
    _fill(small_disk, leave=4 * 1024)
    with TestClient(create_app(settings)) as client:
        response = client.post("/adapters", data={"base_model_id": base_id}, files=files)
        error_of(response, 507, "storage_full")
        assert client.get("/adapters").json()["total"] == 0
    assert _files(small_disk) == ["filler.bin"]
    (small_disk / "filler.bin").unlink()
    with TestClient(create_app(settings)) as client:  # and with space, the same upload works
        response = client.post("/adapters", data={"base_model_id": base_id}, files=files)
        assert response.status_code == 201, response.text
