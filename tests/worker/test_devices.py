"""Jobs routed by device: ``auto``/``cpu`` to TRAINING_QUEUE, ``cuda`` to GPU_TRAINING_QUEUE;
the device a job ran on is recorded; a ``cuda`` job no GPU worker takes fails after
GPU_WAIT_SECONDS; a GPU worker without CUDA refuses to start (a real ``lora-service worker``
process). This host has no GPU: the CUDA side of ``resolve_device`` runs only on a GPU host
(benchmarks/device_check.sh)."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import update

from service.core.job_spec import SPECS
from service.db import job_records
from service.db.engine import session_scope
from service.db.job_devices import device_of_job
from service.db.tables import JobRecord, utcnow
from service.jobs.queue import queue_for_device, worker_queues
from tests.job_rows import queue_job_row
from worker import reaper, runner
from worker.device import startup_problem

TINY = {"epochs": 1, "hidden1": 16, "hidden2": 16, "max_train_samples": 300}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without CUDA")


def _submit(settings, config: dict) -> str:  # noqa: ANN001
    return queue_job_row(settings, "pretrain", config)


def _job(settings, job_id: str):  # noqa: ANN001, ANN202
    with session_scope(settings.database_url) as s:
        return job_records.get_job(s, job_id)


def test_each_device_goes_to_its_queue(migrated) -> None:
    ids = {d: _submit(migrated, {**TINY, "device": d}) for d in ("auto", "cpu", "cuda")}
    queues = {
        d: queue_for_device(device_of_job(migrated.database_url, i), migrated)
        for d, i in ids.items()
    }
    assert queues == {"auto": "training", "cpu": "training", "cuda": "training-gpu"}
    assert device_of_job(migrated.database_url, "job_unknown") == "auto"
    gpu = migrated.model_copy(update={"worker_device": "cuda"})
    assert worker_queues(gpu) == ["training-gpu", "training"]  # GPU workers take auto jobs too
    assert worker_queues(migrated) == ["training"]
    with pytest.raises(ValueError):
        SPECS["pretrain"](**TINY, device="tpu")


def test_a_cpu_job_records_its_device(migrated) -> None:
    job_id = _submit(migrated, {**TINY, "device": "cpu"})
    assert runner.run_job(job_id, migrated, worker_id="w") == "succeeded"
    job = _job(migrated, job_id)
    assert job.test_metrics["device"] == "cpu" and job.test_metrics["device_name"] == "cpu"
    auto = _submit(migrated, TINY)
    assert runner.run_job(auto, migrated, worker_id="w") == "succeeded"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert _job(migrated, auto).test_metrics["device"] == expected


@NO_CUDA
def test_a_cuda_job_on_a_host_without_cuda_fails_with_a_code(migrated) -> None:
    job_id = _submit(migrated, {**TINY, "device": "cuda"})
    assert runner.run_job(job_id, migrated, worker_id="w") == "failed"
    assert _job(migrated, job_id).error_code == "cuda_unavailable"


def test_an_unclaimed_cuda_job_fails_after_the_wait(migrated) -> None:
    settings = migrated.model_copy(update={"gpu_wait_seconds": 60})
    old_cuda, new_cuda, old_auto = (
        _submit(settings, {**TINY, "device": d}) for d in ("cuda", "cuda", "auto")
    )
    with session_scope(settings.database_url) as s:
        s.execute(
            update(JobRecord)
            .where(JobRecord.id.in_([old_cuda, old_auto]))
            .values(created_at=utcnow() - timedelta(seconds=61), heartbeat_at=utcnow())
        )
    result = reaper.reap_once(settings, send=lambda job_id: None)
    assert result.failed == [old_cuda]
    failed = _job(settings, old_cuda)
    assert failed.status == "failed" and failed.error_code == "no_gpu_worker"
    assert "GPU_WAIT_SECONDS" in failed.error_message
    assert _job(settings, new_cuda).status == "queued"  # still inside its wait
    assert _job(settings, old_auto).status == "queued"  # auto jobs wait for any worker


def test_startup_check_names_the_gpu_queue(migrated) -> None:
    gpu = migrated.model_copy(update={"worker_device": "cuda"})
    assert "training-gpu" in startup_problem(gpu, cuda_available=False)
    assert startup_problem(gpu, cuda_available=True) is None
    assert startup_problem(migrated, cuda_available=False) is None
    on_gpu_queue = migrated.model_copy(update={"training_queue": "training-gpu"})
    assert startup_problem(on_gpu_queue, cuda_available=False) is not None


@NO_CUDA
def test_a_gpu_worker_without_cuda_refuses_to_start(migrated, tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": migrated.database_url,
        "BROKER_URL": migrated.broker_url,
        "ARTIFACT_DIR": str(tmp_path / "a"),
        "WORKER_DEVICE": "cuda",
    }
    script = Path(sys.executable).with_name("lora-service")
    done = subprocess.run(
        [str(script), "worker"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to start" in done.stderr and "training-gpu" in done.stderr
    assert "no CUDA device" in done.stderr
