"""Registry and job state transitions on SQLite and on a real Postgres database."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from svc_helpers import add_model

from service.db import registry
from service.db.session import session_scope
from service.db.tables import MetricRecord


def _job(url: str, kind: str = "pretrain") -> str:
    with session_scope(url) as s:
        return registry.create_job(
            s, kind=kind, config={"epochs": 3}, base_model_id=None, epochs=3
        ).id


def _status(url: str, job_id: str) -> str:
    with session_scope(url) as s:
        return registry.get_job(s, job_id).status


def test_claim_job_once(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job = registry.claim_job(s, job_id, "w1")
        assert job is not None and job.status == "running" and job.attempt == 1
        assert job.worker_id == "w1" and job.started_at and job.heartbeat_at
        assert registry.claim_job(s, job_id, "w2") is None  # a second delivery does nothing
        assert registry.claim_job(s, "job_missing", "w2") is None
        assert registry.get_job(s, job_id).worker_id == "w1"


def test_record_epoch_upserts_one_row_per_name(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        registry.claim_job(s, job_id, "w1")
        assert registry.record_epoch(s, job_id, "w1", 1, {"train_loss": 2.0, "val_loss": 1.5})
        assert registry.record_epoch(s, job_id, "w1", 1, {"train_loss": 1.0, "val_loss": 0.5})
        assert registry.record_epoch(s, job_id, "w1", 2, {"train_loss": 0.9})
        assert not registry.record_epoch(s, job_id, "intruder", 3, {"train_loss": 0.1})
        count = s.scalar(select(func.count()).where(MetricRecord.job_id == job_id))
        assert count == 3
        assert registry.job_metrics(s, job_id) == {
            1: {"train_loss": 1.0, "val_loss": 0.5},
            2: {"train_loss": 0.9},
        }
        assert registry.get_job(s, job_id).epoch == 2


def test_cancel_queued_job_is_immediate(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job = registry.request_cancel(s, job_id)
        assert job.status == "cancelled" and job.finished_at is not None
        assert registry.claim_job(s, job_id, "w1") is None
        assert registry.request_cancel(s, "job_missing") is None


def test_cancel_running_job_blocks_success(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        registry.claim_job(s, job_id, "w1")
        assert registry.stop_reason(s, job_id, "w1") is None
        assert registry.stop_reason(s, job_id, "w2") == "lease_lost"
        job = registry.request_cancel(s, job_id)
        assert job.status == "running" and job.cancel_requested
        assert registry.stop_reason(s, job_id, "w1") == "cancel_requested"
        assert not registry.mark_succeeded(
            s, job_id, "w1", test_accuracy=1.0, test_metrics=None, result_model_id="m"
        )
        s.rollback()
        assert registry.finish_cancelled(s, job_id, "w1")
        job = registry.get_job(s, job_id)
        assert job.status == "cancelled" and job.result_model_id is None
        assert not registry.renew_lease(s, job_id, "w1")


def test_succeed_and_register_in_one_transaction(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        registry.claim_job(s, job_id, "w1")
        assert registry.renew_lease(s, job_id, "w1")
        assert registry.mark_succeeded(
            s, job_id, "w1", test_accuracy=0.9, test_metrics={"accuracy": 0.9},
            result_model_id="mdl_x",
        )  # fmt: skip
        registry.register_model(
            s, model_id="mdl_x", kind="pretrained", job_id=job_id, parent_id=None,
            classes=[0, 1], architecture={}, n_parameters=3, test_accuracy=0.9, path="/p",
        )  # fmt: skip
    with session_scope(db_url) as s:
        job = registry.get_job(s, job_id)
        assert (job.status, job.epoch, job.result_model_id) == ("succeeded", 3, "mdl_x")
        assert registry.get_model(s, "mdl_x").job_id == job_id
        # finished jobs are final
        assert not registry.mark_failed(s, job_id, code="x", message="y")
        assert not registry.finish_cancelled(s, job_id)
        assert registry.request_cancel(s, job_id).status == "succeeded"


def test_mark_failed_records_error(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        registry.claim_job(s, job_id, "w1")
        assert not registry.mark_failed(s, job_id, code="c", message="m", worker_id="w2")
        assert registry.mark_failed(s, job_id, code="training_error", message="x" * 10_000)
        job = registry.get_job(s, job_id)
        assert job.status == "failed" and job.error_code == "training_error"
        assert len(job.error_message) == 4000


def test_adapters_register_list_delete(db_url: str) -> None:
    base = add_model(db_url)
    with session_scope(db_url) as s:
        for i in range(3):
            registry.register_adapter(
                s, adapter_id=f"adp_{base}_{i}", base_model_id=base, job_id=None,
                source="imported", lora_config={"r": 2, "lora_alpha": 4, "target_modules":
                ["linear1"]}, trainable_parameters=10, classes=[5, 6], test_accuracy=None,
                path="/a",
            )  # fmt: skip
    with session_scope(db_url) as s:
        items, total = registry.list_adapters(s, base_model_id=base, limit=2)
        assert total == 3 and len(items) == 2
        assert items[0].use_rslora is False and items[0].lora_dropout == 0.0
        assert registry.delete_adapter(s, f"adp_{base}_0").path == "/a"
        assert registry.delete_adapter(s, f"adp_{base}_0") is None
    with session_scope(db_url) as s:
        assert registry.list_adapters(s, base_model_id=base)[1] == 2


def test_register_adapter_needs_existing_base(db_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), session_scope(db_url) as s:
        registry.register_adapter(
            s, adapter_id="adp_orphan", base_model_id="mdl_missing", job_id=None,
            source="imported", lora_config={"r": 1, "lora_alpha": 1, "target_modules": []},
            trainable_parameters=1, classes=[], test_accuracy=None, path="/a",
        )  # fmt: skip
