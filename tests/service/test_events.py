"""The event log, checkpoints, checkpoint selection, early stopping and the per-epoch
forgetting measure, with jobs run in-process (the runner as a worker runs it) behind the
real app.

The live stream (SSE over a real HTTP server) is in ``test_event_stream.py``; events across
real SIGKILLed worker processes in ``tests/robustness/test_redis_crashes.py``.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import pytest

from models.early_stopping import EarlyStopping, best_epoch
from models.training import EpochMetrics
from service.db import event_records
from service.db.engine import session_scope
from service.jobs import leases
from service.jobs import state as job_state
from worker import runner
from worker.checkpoints import kept_epochs

TINY = {"hidden1": 16, "hidden2": 16, "max_train_samples": 300}


class WorkerDied(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so nothing in the runner handles it."""


def _submit(client, body: dict) -> str:  # noqa: ANN001
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def _events(client, job_id: str, **params) -> list[dict]:  # noqa: ANN001, ANN003
    resp = client.get(f"/jobs/{job_id}/events", params={"limit": 1000, **params})
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


def _statuses(events: list[dict]) -> list[str]:
    return [e["data"]["status"] for e in events if e["type"] == "status"]


def _register_base(settings) -> str:  # noqa: ANN001
    """An untrained 784-16-16-5 MLP for digits 0-4, registered as a pre-trained base."""
    import torch

    from models.checkpoint import save_model
    from models.classifier import MLP, MLPConfig, count_parameters
    from service.core.artifacts import model_dir
    from service.db import model_records

    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden1=16, hidden2=16, n_classes=5))
    directory = model_dir(settings, "mdl_base")
    save_model(directory, model, [0, 1, 2, 3, 4])
    with session_scope(settings.database_url) as s:
        model_records.register_model(
            s, model_id="mdl_base", kind="pretrain", job_id=None, parent_id=None,
            classes=[0, 1, 2, 3, 4], architecture=model.config.to_dict(),
            n_parameters=count_parameters(model), test_accuracy=None, path=str(directory),
        )  # fmt: skip
    return "mdl_base"


def test_a_job_logs_one_event_per_fact_in_order(client, migrated) -> None:  # noqa: ANN001
    job_id = _submit(client, {"kind": "pretrain", "config": {**TINY, "epochs": 3}})
    assert _statuses(_events(client, job_id)) == ["queued"]
    assert runner.run_job(job_id, migrated, worker_id="host:1") == "succeeded"
    assert runner.run_job(job_id, migrated, worker_id="host:2") == "skipped"  # redelivered

    events = _events(client, job_id)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    kinds = [(e["type"], e["data"].get("status") or e["data"].get("epoch")) for e in events]
    assert kinds == [
        ("status", "queued"),
        ("status", "running"),
        *[(t, epoch) for epoch in (1, 2, 3) for t in ("metrics", "checkpoint")],
        ("status", "succeeded"),
    ]
    running = events[1]
    assert running["data"] == {
        "status": "running", "attempt": 1, "worker": "host:1", "took_over": False
    }  # fmt: skip
    metrics = [e for e in events if e["type"] == "metrics"]
    rows = client.get(f"/jobs/{job_id}/metrics").json()["epochs"]
    for event, row in zip(metrics, rows, strict=True):  # the event is the epoch's row
        assert event["data"]["val_loss"] == pytest.approx(row["val_loss"])
        assert event["data"]["train_loss"] == pytest.approx(row["train_loss"])
        assert event["message"].startswith(f"epoch {row['epoch']}/3: train_loss ")
    done = events[-1]
    assert done["level"] == "info" and done["data"]["result_model_id"] is not None
    assert all(e["job_id"] == job_id and e["created_at"] for e in events)

    # cursor pagination
    page = client.get(f"/jobs/{job_id}/events", params={"after": 2, "limit": 3}).json()
    assert [e["id"] for e in page["items"]] == [3, 4, 5]
    assert page["has_more"] is True and page["next_after"] == 5
    last = client.get(f"/jobs/{job_id}/events", params={"after": 9, "limit": 3}).json()
    assert last == {"items": [], "has_more": False, "next_after": 9}
    bad = client.get(f"/jobs/{job_id}/events", params={"after": -1})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "after"
    assert client.get("/jobs/job_nope/events").status_code == 404


def _die_after_recording(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    real = job_state.record_epoch

    def record(session, job_id, worker_id, n, values, **kw):  # noqa: ANN001, ANN003, ANN202
        done = real(session, job_id, worker_id, n, values, **kw)
        if n == epoch:
            raise WorkerDied
        return done

    monkeypatch.setattr(job_state, "record_epoch", record)


def test_events_stay_unique_across_a_lost_worker_and_redeliveries(
    client, migrated, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    job_id = _submit(client, {"kind": "pretrain", "config": {**TINY, "epochs": 3}})
    _die_after_recording(monkeypatch, 2)
    with pytest.raises(WorkerDied):
        runner.run_job(job_id, migrated, worker_id="w1")
    monkeypatch.undo()
    time.sleep(0.05)
    with session_scope(migrated.database_url) as s:
        reaped = leases.reap(
            s, lease_seconds=0.01, max_attempts=3, resend_after=3600, send=lambda _: None
        )
    assert reaped.requeued == [job_id]
    assert runner.run_job(job_id, migrated, worker_id="w2") == "succeeded"
    assert runner.run_job(job_id, migrated, worker_id="w3") == "skipped"

    events = _events(client, job_id)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert _statuses(events) == ["queued", "running", "requeued", "running", "succeeded"]
    requeued = next(e for e in events if e["data"].get("status") == "requeued")
    assert requeued["level"] == "warning" and requeued["data"]["attempt"] == 1
    attempts = [e["data"]["attempt"] for e in events if e["data"].get("status") == "running"]
    assert attempts == [1, 2]
    epochs = Counter(e["data"]["epoch"] for e in events if e["type"] == "metrics")
    assert epochs == {1: 1, 2: 1, 3: 1}  # the resumed run re-recorded 1-2: no second event
    with session_scope(migrated.database_url) as s:
        facts = [e.fact for e in event_records.list_events(s, job_id, limit=1000)]
    assert len(facts) == len(set(facts))


def test_cancel_and_failure_are_events(client, migrated) -> None:  # noqa: ANN001
    queued = _submit(client, {"kind": "pretrain", "config": {**TINY, "epochs": 1}})
    assert client.post(f"/jobs/{queued}/cancel").status_code == 200
    assert _statuses(_events(client, queued)) == ["queued", "cancelled"]

    failing = _submit(client, {"kind": "pretrain", "config": {**TINY, "epochs": 1}})
    migrated_bad = migrated.model_copy(update={"data_dir": migrated.artifact_dir / "no-mnist"})
    assert runner.run_job(failing, migrated_bad, worker_id="w") == "failed"
    last = _events(client, failing)[-1]
    assert last["level"] == "error" and last["data"]["code"] == "data_unavailable"
    assert last["message"].startswith("failed (data_unavailable): ")


def test_early_stopping_on_a_plateau(client, migrated) -> None:  # noqa: ANN001
    config = {
        **TINY, "epochs": 10, "lr": 1e-7, "lr_schedule": "constant",
        "early_stopping": {"patience": 2, "min_delta": 0.01},
    }  # fmt: skip
    job_id = _submit(client, {"kind": "pretrain", "config": config})
    assert runner.run_job(job_id, migrated, worker_id="w") == "succeeded"
    job = client.get(f"/jobs/{job_id}").json()
    reason = "early stop at epoch 3: val_loss has not improved by 0.01 for 2 epochs"
    assert job["result"]["stopped_early"] == reason
    assert job["progress"]["epoch"] == 3 and job["status"] == "succeeded"
    assert len(client.get(f"/jobs/{job_id}/metrics").json()["epochs"]) == 3
    events = _events(client, job_id)
    message = next(e for e in events if e["type"] == "message")
    assert message["message"] == reason and message["data"]["epoch"] == 3
    assert events[-1]["data"]["stopped_early"] == reason


def test_checkpoints_kept_selected_and_a_non_final_epoch_published_and_served(
    client, migrated
) -> None:  # noqa: ANN001
    base = _register_base(migrated)
    config = {"epochs": 3, "r": 2, "max_train_samples": 300, "keep_checkpoints": 3,
              "select": "last"}  # fmt: skip
    job_id = _submit(client, {"kind": "finetune_lora", "base_model_id": base, "config": config})
    assert runner.run_job(job_id, migrated, worker_id="w") == "succeeded"
    job = client.get(f"/jobs/{job_id}").json()
    assert job["result"]["selected_epoch"] == 3

    checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["items"]
    assert [c["epoch"] for c in checkpoints] == [1, 2, 3]
    assert [c["selected"] for c in checkpoints] == [False, False, True]
    assert checkpoints[2]["published_id"] == job["result"]["adapter_id"]
    assert set(checkpoints[0]["metrics"]) >= {"val_loss", "val_accuracy", "base_val_accuracy"}

    resp = client.post(f"/jobs/{job_id}/checkpoints/1/publish")
    assert resp.status_code == 201, resp.text
    adapter = resp.json()
    assert adapter["id"].endswith("_e1") and adapter["base_model_id"] == base and adapter["r"] == 2
    again = client.post(f"/jobs/{job_id}/checkpoints/1/publish")
    assert again.status_code == 200 and again.json()["id"] == adapter["id"]
    final = client.post(f"/jobs/{job_id}/checkpoints/3/publish")
    assert final.status_code == 200 and final.json()["id"] == job["result"]["adapter_id"]
    missing = client.post(f"/jobs/{job_id}/checkpoints/9/publish")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "checkpoint_not_found"

    pixels = [[0.0] * 28 for _ in range(28)]
    for row in range(4, 24):
        pixels[row][14] = 1.0
    served = client.post(
        "/predict", json={"model_id": base, "adapter_id": adapter["id"], "pixels": pixels}
    )
    assert served.status_code == 200, served.text
    assert (
        client.get(f"/jobs/{job_id}/checkpoints").json()["items"][0]["published_id"]
        == (adapter["id"])
    )
    # the epoch-1 adapter differs from the final one: its answers on the same input differ
    final_answer = client.post(
        "/predict",
        json={"model_id": base, "adapter_id": job["result"]["adapter_id"], "pixels": pixels},
    ).json()
    assert served.json() != final_answer


def test_select_best_keeps_last_n_plus_best_and_base_accuracy_per_epoch(client, migrated) -> None:  # noqa: ANN001
    base = _register_base(migrated)
    config = {"epochs": 4, "max_train_samples": 300, "lr": 1e-4, "keep_checkpoints": 1}
    job_id = _submit(client, {"kind": "finetune_full", "base_model_id": base, "config": config})
    assert runner.run_job(job_id, migrated, worker_id="w") == "succeeded"
    rows = client.get(f"/jobs/{job_id}/metrics").json()["epochs"]
    history = [
        EpochMetrics(r["epoch"], r["train_loss"], r["val_loss"], r["val_accuracy"], 1.0, 1.0)
        for r in rows
    ]
    best = best_epoch(history, "val_loss")
    job = client.get(f"/jobs/{job_id}").json()
    assert job["result"]["selected_epoch"] == best
    kept = [c["epoch"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()["items"]]
    assert kept == sorted({4, best})
    assert all(0.0 <= r["base_val_accuracy"] <= 1.0 for r in rows)  # full: it moves

    lora = _submit(
        client,
        {"kind": "finetune_lora", "base_model_id": base,
         "config": {"epochs": 2, "max_train_samples": 300}},
    )  # fmt: skip
    assert runner.run_job(lora, migrated, worker_id="w") == "succeeded"
    values = {r["base_val_accuracy"] for r in client.get(f"/jobs/{lora}/metrics").json()["epochs"]}
    assert len(values) == 1  # LoRA: the base alone, unchanged by construction


def test_early_stopping_rule() -> None:
    def history(*losses: float) -> list[EpochMetrics]:
        return [EpochMetrics(i + 1, 0.0, v, 0.5, 1.0, 1.0) for i, v in enumerate(losses)]

    rule = EarlyStopping(patience=2, min_delta=0.1)
    assert rule.reason(history(1.0, 0.8, 0.75)) is None  # one epoch without improvement
    assert rule.reason(history(1.0, 0.8, 0.75, 0.72)) == (
        "early stop at epoch 4: val_loss has not improved by 0.1 for 2 epochs"
    )
    assert rule.reason(history(1.0, 0.95, 0.8)) is None  # 0.8 improved on 1.0 by > 0.1
    by_accuracy = EarlyStopping(patience=1, metric="val_accuracy")
    assert by_accuracy.reason(history(1.0, 0.5)) is not None  # accuracy flat at 0.5
    assert rule.reason(history(1.0, math.nan, math.nan)) is not None
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)


def test_kept_epochs_are_the_last_n_plus_the_best() -> None:
    metrics = {
        1: {"val_loss": 0.5},
        2: {"val_loss": 0.2},
        3: {"val_loss": 0.4},
        4: {"val_loss": 0.3},
    }
    assert kept_epochs(metrics, 1, "val_loss") == {2, 4}
    assert kept_epochs(metrics, 3, "val_loss") == {2, 3, 4}
    accuracy = {1: {"val_accuracy": 0.9}, 2: {"val_accuracy": 0.8}}
    assert kept_epochs(accuracy, 1, "val_accuracy") == {1, 2}


def test_spec_refuses_unknown_early_stopping_fields(client) -> None:  # noqa: ANN001
    resp = client.post(
        "/jobs",
        json={"kind": "pretrain", "config": {"early_stopping": {"patience": 2, "typo": 1}}},
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "config.early_stopping.typo"
    bad = client.post("/jobs", json={"kind": "pretrain", "config": {"select": "median"}})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "config.select"
