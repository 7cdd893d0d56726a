"""Record modules and job state transitions on SQLite and on a real Postgres database."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from svc_helpers import add_model

from models.lora import LoraConfig
from service.db import adapter_records, job_records, metric_records, model_records
from service.db.engine import session_scope
from service.db.tables import MetricRecord
from service.jobs import state as job_state


def _job(url: str, kind: str = "pretrain") -> str:
    with session_scope(url) as s:
        return job_records.create_job(
            s, kind=kind, config={"epochs": 3}, base_model_id=None, epochs=3
        ).id


def _status(url: str, job_id: str) -> str:
    with session_scope(url) as s:
        return job_records.get_job(s, job_id).status


def test_claim_job_once(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job = job_state.claim_job(s, job_id, "w1")
        assert job is not None and job.status == "running" and job.attempt == 1
        assert job.worker_id == "w1" and job.started_at and job.heartbeat_at
        assert job_state.claim_job(s, job_id, "w2") is None  # a second delivery does nothing
        assert job_state.claim_job(s, "job_missing", "w2") is None
        assert job_records.get_job(s, job_id).worker_id == "w1"


def test_record_epoch_upserts_one_row_per_name(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job_state.claim_job(s, job_id, "w1")
        assert job_state.record_epoch(s, job_id, "w1", 1, {"train_loss": 2.0, "val_loss": 1.5})
        assert job_state.record_epoch(s, job_id, "w1", 1, {"train_loss": 1.0, "val_loss": 0.5})
        assert job_state.record_epoch(s, job_id, "w1", 2, {"train_loss": 0.9})
        assert not job_state.record_epoch(s, job_id, "intruder", 3, {"train_loss": 0.1})
        count = s.scalar(select(func.count()).where(MetricRecord.job_id == job_id))
        assert count == 3
        assert metric_records.job_metrics(s, job_id) == {
            1: {"train_loss": 1.0, "val_loss": 0.5},
            2: {"train_loss": 0.9},
        }
        assert job_records.get_job(s, job_id).epoch == 2


def test_cancel_queued_job_is_immediate(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job = job_state.request_cancel(s, job_id)
        assert job.status == "cancelled" and job.finished_at is not None
        assert job_state.claim_job(s, job_id, "w1") is None
        assert job_state.request_cancel(s, "job_missing") is None


def test_cancel_running_job_blocks_success(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job_state.claim_job(s, job_id, "w1")
        assert job_state.stop_reason(s, job_id, "w1") is None
        assert job_state.stop_reason(s, job_id, "w2") == "lease_lost"
        job = job_state.request_cancel(s, job_id)
        assert job.status == "running" and job.cancel_requested
        assert job_state.stop_reason(s, job_id, "w1") == "cancel_requested"
        assert not job_state.mark_succeeded(
            s, job_id, "w1", test_accuracy=1.0, test_metrics=None, result_model_id="m"
        )
        s.rollback()
        assert job_state.finish_cancelled(s, job_id, "w1")
        job = job_records.get_job(s, job_id)
        assert job.status == "cancelled" and job.result_model_id is None
        assert not job_state.renew_lease(s, job_id, "w1")


def test_succeed_and_register_in_one_transaction(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job_state.claim_job(s, job_id, "w1")
        assert job_state.renew_lease(s, job_id, "w1")
        assert job_state.mark_succeeded(
            s, job_id, "w1", test_accuracy=0.9, test_metrics={"accuracy": 0.9},
            result_model_id="mdl_x",
        )  # fmt: skip
        model_records.register_model(
            s, model_id="mdl_x", kind="pretrain", job_id=job_id, parent_id=None,
            classes=[0, 1], architecture={}, n_parameters=3, test_accuracy=0.9, path="/p",
        )  # fmt: skip
    with session_scope(db_url) as s:
        job = job_records.get_job(s, job_id)
        assert (job.status, job.epoch, job.result_model_id) == ("succeeded", 3, "mdl_x")
        assert model_records.get_model(s, "mdl_x").job_id == job_id
        # finished jobs are final
        assert not job_state.mark_failed(s, job_id, code="x", message="y")
        assert not job_state.finish_cancelled(s, job_id)
        assert job_state.request_cancel(s, job_id).status == "succeeded"


def test_mark_failed_records_error(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job_state.claim_job(s, job_id, "w1")
        assert not job_state.mark_failed(s, job_id, code="c", message="m", worker_id="w2")
        assert job_state.mark_failed(s, job_id, code="training_error", message="x" * 10_000)
        job = job_records.get_job(s, job_id)
        assert job.status == "failed" and job.error_code == "training_error"
        assert len(job.error_message) == 4000


def test_adapters_register_list_delete(db_url: str) -> None:
    base = add_model(db_url)
    with session_scope(db_url) as s:
        for i in range(3):
            adapter_records.register_adapter(
                s, adapter_id=f"adp_{base}_{i}", base_model_id=base, job_id=None,
                source="imported", lora_config=LoraConfig(r=2, lora_alpha=4, target_modules=
                ("linear1",)), trainable_parameters=10, classes=[5, 6], test_accuracy=None,
                path="/a",
            )  # fmt: skip
    with session_scope(db_url) as s:
        items, total = adapter_records.list_adapters(s, base_model_id=base, limit=2)
        assert total == 3 and len(items) == 2
        assert items[0].use_rslora is False and items[0].lora_dropout == 0.0
        assert adapter_records.delete_adapter(s, f"adp_{base}_0").path == "/a"
        assert adapter_records.delete_adapter(s, f"adp_{base}_0") is None
    with session_scope(db_url) as s:
        assert adapter_records.list_adapters(s, base_model_id=base)[1] == 2


def test_register_adapter_needs_existing_base(db_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), session_scope(db_url) as s:
        adapter_records.register_adapter(
            s, adapter_id="adp_orphan", base_model_id="mdl_missing", job_id=None,
            source="imported", lora_config=LoraConfig(r=1, lora_alpha=1),
            trainable_parameters=1, classes=[], test_accuracy=None, path="/a",
        )  # fmt: skip
