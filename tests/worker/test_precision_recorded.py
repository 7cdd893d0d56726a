"""The precision a job resolved to is recorded on the job and on what it registered (issue 16)."""

from __future__ import annotations

from models.precision import resolve_precision
from service.api.schemas import adapter_out, job_out, model_out
from service.db import adapter_records, model_records
from service.db.engine import session_scope
from tests.worker.test_runner import TINY, _job, _submit
from worker import runner


def test_job_model_and_adapter_record_the_resolved_precision(migrated) -> None:
    base_job = _submit(migrated, config={**TINY, "precision": "auto"})
    assert runner.run_job(base_job, migrated, worker_id="w") == "succeeded"
    expected = resolve_precision("auto", "cpu")  # bf16 on AMX/AVX512-BF16 CPUs, else fp32
    job = _job(migrated, base_job)
    assert job.test_metrics["precision"] == expected
    assert job_out(job).result.precision == expected
    assert job_out(job).config["precision"] == "auto"  # what was asked stays as asked
    lora_job = _submit(
        migrated,
        "finetune_lora",
        {"digits": [5, 6, 7, 8, 9], "epochs": 1, "max_train_samples": 300, "precision": "bf16"},
        job.result_model_id,
    )
    assert runner.run_job(lora_job, migrated, worker_id="w") == "succeeded"
    done = _job(migrated, lora_job)
    assert done.test_metrics["precision"] == "bf16"
    with session_scope(migrated.database_url) as s:
        model = model_records.get_model(s, job.result_model_id)
        adapter = adapter_records.get_adapter(s, done.result_adapter_id)
        assert model.precision == expected and model_out(model).precision == expected
        assert adapter.precision == "bf16" and adapter_out(adapter).precision == "bf16"
    default = _job(migrated, _submit(migrated, config=TINY))
    assert default.config["precision"] == "fp32"  # the default until the README's figures
