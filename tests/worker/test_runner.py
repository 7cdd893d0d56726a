"""The job runner in-process (the e2e tests run it inside real worker processes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.core.artifacts import checkpoint_dir, checkpoint_file, epoch_checkpoint_dir, model_dir
from service.core.vocab import derived_id
from service.db import job_records, model_records
from service.db.engine import session_factory, session_scope
from service.jobs import state as job_state
from tests.job_rows import queue_job_row
from worker import build, runner

TINY = {"epochs": 1, "hidden1": 16, "hidden2": 16, "max_train_samples": 500}


_submit = queue_job_row


def _job(settings, job_id: str):  # noqa: ANN001, ANN202
    with session_scope(settings.database_url) as s:
        return job_records.get_job(s, job_id)


def test_pretrain_succeeds_and_registers(migrated) -> None:
    job_id = _submit(migrated, config=TINY)
    assert runner.run_job(job_id, migrated, worker_id="w") == "succeeded"
    job = _job(migrated, job_id)
    assert job.status == "succeeded" and job.attempt == 1 and job.epoch == 1
    model_id = derived_id("mdl", job_id)
    assert job.result_model_id == model_id
    assert (model_dir(migrated, model_id) / "model.safetensors").exists()
    assert not checkpoint_file(migrated, job_id).exists()  # resumable state removed after success
    kept = sorted(p.name for p in checkpoint_dir(migrated, job_id).iterdir())
    assert kept == [epoch_checkpoint_dir(migrated, job_id, 1).name]  # the kept epoch stays
    # a redelivered message for a finished job does nothing
    assert runner.run_job(job_id, migrated, worker_id="w2") == "skipped"


def test_missing_data_fails_with_code(migrated, tmp_path: Path) -> None:
    settings = migrated.model_copy(update={"data_dir": tmp_path / "empty"})
    job_id = _submit(settings, config=TINY)
    assert runner.run_job(job_id, settings, worker_id="w") == "failed"
    job = _job(settings, job_id)
    assert job.error_code == "data_unavailable" and "MNIST" in job.error_message


def test_cancel_requested_before_training_registers_nothing(migrated, monkeypatch) -> None:
    job_id = _submit(migrated, config=TINY)
    real_claim = job_state.claim_job

    def claim_then_cancel(session, jid, wid):  # noqa: ANN001, ANN202
        job = real_claim(session, jid, wid)
        job_state.request_cancel(session, jid)  # the user cancels right after the start
        return job

    monkeypatch.setattr(job_state, "claim_job", claim_then_cancel)
    assert runner.run_job(job_id, migrated, worker_id="w") == "cancelled"
    job = _job(migrated, job_id)
    assert job.status == "cancelled" and job.result_model_id is None
    with session_scope(migrated.database_url) as s:
        assert model_records.list_models(s)[1] == 0


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (runner.JobFailure("base_model_missing", "gone"), "base_model_missing"),
        (runner.JobFailure("data_unavailable", "MNIST raw files not found"), "data_unavailable"),
        # any other missing file (say, while writing artifacts) is not a data problem
        (FileNotFoundError("/var/artifacts/x: no such file"), "training_error"),
        (RuntimeError("boom"), "training_error"),
    ],
)
def test_describe_failure(exc: Exception, code: str) -> None:
    assert runner.describe_failure(exc)[0] == code


def test_stop_check_polls_database_at_most_twice_a_second(migrated, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(job_state, "stop_reason", lambda *a: calls.append(a) or None)
    check = runner.StopCheck(session_factory(migrated.database_url), "job_x", "w", 0.5)
    started = time.monotonic()
    while time.monotonic() - started < 0.3:
        assert check() is False
    assert len(calls) == 1


def test_lease_keeper_renews_heartbeat(migrated) -> None:
    job_id = _submit(migrated, config=TINY)
    with session_scope(migrated.database_url) as s:
        first = job_state.claim_job(s, job_id, "w").heartbeat_at
    factory = session_factory(migrated.database_url)
    with runner.LeaseKeeper(factory, job_id, "w", interval=0.05) as keeper:
        time.sleep(0.3)
    assert not keeper.lost
    assert _job(migrated, job_id).heartbeat_at > first


def test_finetunes_train_with_their_configured_dropout(migrated) -> None:
    base_job = _submit(migrated, config={**TINY, "dropout": 0.5})
    assert runner.run_job(base_job, migrated, worker_id="w") == "succeeded"
    base = _job(migrated, base_job).result_model_id
    factory = session_factory(migrated.database_url)
    for kind, config, expected in [
        ("finetune_lora", {}, 0.0),  # LoRA default: the frozen base without dropout
        ("finetune_full", {}, 0.0),
        ("finetune_full", {"dropout": 0.2}, 0.2),
    ]:
        job = _job(migrated, _submit(migrated, kind, {"digits": [5, 6, 7, 8, 9], **config}, base))
        network = build.build_network(factory, job, runner.job_spec_of(job))
        assert network.dropout.p == expected, (kind, config)
        assert network.config.dropout == 0.5  # the architecture record is unchanged
