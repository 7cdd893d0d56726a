"""A full disk under ``ARTIFACT_DIR``: a real, small tmpfs mounted by the test (needs root;
skipped with the reason otherwise), filled to a few KB free.

* a job whose checkpoint write hits ENOSPC ends ``failed`` with ``storage_full``; nothing it
  wrote stays (no temporary file, no checkpoint, no model); once space is freed the next job
  succeeds and its model loads;
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


def _job(settings) -> str:  # noqa: ANN001
    from service.core.job_spec import PretrainSpec

    spec = PretrainSpec(**TINY)
    with session_scope(settings.database_url) as s:
        job = job_records.create_job(
            s, kind="pretrain", config=spec.model_dump(mode="json"), base_model_id=None,
            epochs=spec.epochs,
        )  # fmt: skip
        return job.id


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
