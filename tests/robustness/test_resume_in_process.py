"""Resume and fencing in-process (no worker processes): a run that dies mid-job leaves a
stale lease and a checkpoint; the reaper requeues it, and the next run continues from the
checkpoint with one metrics row per epoch and name."""

from __future__ import annotations

import time

import pytest

from service.core.artifacts import checkpoint_file
from service.db import job_records, metric_records
from service.db.engine import session_factory, session_scope
from service.jobs import leases
from service.jobs import state as job_state
from worker import runner
from worker.lease import LeaseKeeper, StopCheck, fence_after

EPOCHS = 4
TINY = {"epochs": EPOCHS, "hidden1": 16, "hidden2": 16, "max_train_samples": 400}
NAMES = {"train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"}


class WorkerDied(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so nothing in the runner handles it."""


def _submit(settings) -> str:  # noqa: ANN001
    from service.core.job_spec import PretrainSpec

    cfg = PretrainSpec(**TINY)
    with session_scope(settings.database_url) as s:
        return job_records.create_job(
            s, kind="pretrain", config=cfg.model_dump(mode="json"), base_model_id=None,
            epochs=cfg.epochs,
        ).id  # fmt: skip


def _die_at(monkeypatch: pytest.MonkeyPatch, epoch: int, *, before_record: bool) -> None:
    """Make the run die when it reaches ``epoch``'s ``record_epoch`` (after the checkpoint
    of that epoch was written), before or after the epoch's metrics are recorded."""
    real = job_state.record_epoch

    def record(session, job_id, worker_id, n, values, **kw):  # noqa: ANN001, ANN003, ANN202
        if n == epoch and before_record:
            raise WorkerDied
        done = real(session, job_id, worker_id, n, values, **kw)
        if n == epoch:
            raise WorkerDied
        return done

    monkeypatch.setattr(job_state, "record_epoch", record)


def _metrics(settings, job_id: str) -> dict[int, dict[str, float]]:  # noqa: ANN001
    with session_scope(settings.database_url) as s:
        return metric_records.job_metrics(s, job_id)


def _requeue(settings, job_id: str) -> None:  # noqa: ANN001
    time.sleep(0.05)
    with session_scope(settings.database_url) as s:
        result = leases.reap(
            s, lease_seconds=0.01, max_attempts=3, resend_after=3600, send=lambda _: None
        )
    assert job_id in result.requeued


@pytest.mark.parametrize("before_record", [False, True], ids=["after_metrics", "before_metrics"])
def test_requeued_job_resumes_from_its_checkpoint(
    migrated, monkeypatch: pytest.MonkeyPatch, before_record: bool
) -> None:
    job_id = _submit(migrated)
    _die_at(monkeypatch, 2, before_record=before_record)
    with pytest.raises(WorkerDied):
        runner.run_job(job_id, migrated, worker_id="w1")
    monkeypatch.undo()
    ckpt = checkpoint_file(migrated, job_id)
    from models.checkpoint import read_training_meta

    assert read_training_meta(ckpt)["epoch"] == 2
    first = _metrics(migrated, job_id)
    assert sorted(first) == ([1] if before_record else [1, 2])

    _requeue(migrated, job_id)
    assert runner.run_job(job_id, migrated, worker_id="w2") == "succeeded"
    with session_scope(migrated.database_url) as s:
        job = job_records.get_job(s, job_id)
    assert job.attempt == 2 and job.epoch == EPOCHS
    final = _metrics(migrated, job_id)
    assert sorted(final) == list(range(1, EPOCHS + 1))
    assert all(set(values) == NAMES for values in final.values())
    assert final[1] == first[1]  # epoch 1 was not trained again
    assert job.test_metrics["epochs_completed"] == EPOCHS


def test_unreadable_checkpoint_restarts_from_scratch(migrated) -> None:
    job_id = _submit(migrated)
    ckpt = checkpoint_file(migrated, job_id)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    (ckpt.parent / f".{ckpt.name}.tmp-deadbeef").write_bytes(b"half a write")
    assert runner.run_job(job_id, migrated, worker_id="w1") == "succeeded"
    assert sorted(_metrics(migrated, job_id)) == list(range(1, EPOCHS + 1))


def test_a_redelivery_while_the_lease_is_alive_does_nothing(migrated) -> None:
    job_id = _submit(migrated)
    with session_scope(migrated.database_url) as s:
        job_state.claim_job(s, job_id, "w1")
    assert runner.run_job(job_id, migrated, worker_id="w2") == "skipped"
    with session_scope(migrated.database_url) as s:
        job = job_records.get_job(s, job_id)
    assert job.worker_id == "w1" and job.attempt == 1


def test_worker_fences_itself_when_heartbeats_fail(migrated, monkeypatch) -> None:  # noqa: ANN001
    """No renewal succeeds for ``fence_seconds``: the training loop is told to stop, before
    any reaper could call the lease stale."""
    job_id = _submit(migrated)
    with session_scope(migrated.database_url) as s:
        job_state.claim_job(s, job_id, "w1")

    def unreachable(*_: object) -> bool:
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(job_state, "renew_lease", unreachable)
    factory = session_factory(migrated.database_url)
    keeper = LeaseKeeper(factory, job_id, "w1", interval=0.05, fence_seconds=0.3)
    stop = StopCheck(factory, job_id, "w1", 0.5, lease=keeper)
    with keeper:
        assert not stop()
        started = time.monotonic()
        while not stop():
            assert time.monotonic() - started < 5
            time.sleep(0.02)
    assert stop.reason == "lease_lost" and 0.2 < time.monotonic() - started < 2
    assert fence_after(30, 5) == 20 and fence_after(3, 0.5) == 2
