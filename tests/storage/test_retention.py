"""Retention against the real stores (local directory and moto's S3 server): deleting
models (409 while used, cascade), deleting finished jobs with their checkpoints,
checkpoint expiry, ``lora-service gc`` and the store's bytes on /health/ready."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from service.core import store
from service.core.settings import Settings
from service.core.vocab import derived_id
from service.db import job_records
from service.db.engine import session_factory, session_scope
from service.db.tables import JobRecord, utcnow
from service.jobs.retention import collect_garbage
from tests.job_rows import queue_job_row
from worker import runner

TINY = {"epochs": 1, "hidden1": 16, "hidden2": 16, "max_train_samples": 300}
FT = {"epochs": 1, "max_train_samples": 300}


@pytest.fixture(params=["local", "s3"])
def any_settings(request: pytest.FixtureRequest) -> Settings:
    """Migrated embedded settings with the local store, then with an ``s3://`` one."""
    from service.db.migrations import upgrade

    settings = request.getfixturevalue("settings" if request.param == "local" else "s3_settings")
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def http(any_settings: Settings) -> Iterator:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    with TestClient(create_app(any_settings)) as client:
        yield client


_job = queue_job_row


def _run(settings: Settings, kind: str, config: dict, base: str | None = None) -> JobRecord:
    job_id = _job(settings, kind, config, base)
    assert runner.run_job(job_id, settings, worker_id="w") == "succeeded"
    with session_scope(settings.database_url) as s:
        return job_records.get_job(s, job_id)


def _keys(settings: Settings, top: str) -> set[str]:
    return {k for k, _ in store.get_store(settings).artifacts(top)}


def test_delete_model_refused_while_used_then_cascades(any_settings: Settings, http) -> None:
    pre = _run(any_settings, "pretrain", TINY)
    base = pre.result_model_id
    lora = _run(any_settings, "finetune_lora", {"r": 2, **FT}, base)
    adapter = lora.result_adapter_id
    child = _run(any_settings, "finetune_full", FT, base).result_model_id
    assert {f"models/{base}", f"models/{child}"} <= _keys(any_settings, "models")

    resp = http.delete(f"/models/{base}")
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert (
        error["code"] == "model_in_use"
        and adapter in error["message"]
        and child in error["message"]
    )

    queued = _job(any_settings, "finetune_lora", {"r": 2, **FT}, base)
    resp = http.delete(f"/models/{base}", params={"cascade": "true"})
    assert resp.status_code == 409 and queued in resp.text and "cancel" in resp.text
    assert http.post(f"/jobs/{queued}/cancel").status_code == 200

    assert http.delete(f"/models/{base}", params={"cascade": "true"}).status_code == 204
    for path in (f"/models/{base}", f"/models/{child}", f"/adapters/{adapter}"):
        assert http.get(path).status_code == 404, path
    assert not _keys(any_settings, "models") and not _keys(any_settings, "adapters")
    job = http.get(f"/jobs/{lora.id}").json()  # finished jobs stay, without their base
    assert job["status"] == "succeeded" and job["base_model_id"] is None
    assert http.delete("/models/mdl_nope").status_code == 404
    assert http.delete(f"/models/{child}", params={"cascade": "maybe"}).status_code == 422


def test_delete_job_only_when_finished_with_its_checkpoints(any_settings: Settings, http) -> None:
    done = _run(any_settings, "pretrain", TINY)
    assert any(k.startswith(f"checkpoints/{done.id}/") for k in _keys(any_settings, "checkpoints"))
    queued = _job(any_settings, "pretrain", TINY)
    resp = http.delete(f"/jobs/{queued}")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "job_not_finished"
    assert http.delete(f"/jobs/{done.id}").status_code == 204
    assert http.get(f"/jobs/{done.id}").status_code == 404
    assert not any(
        k.startswith(f"checkpoints/{done.id}/") for k in _keys(any_settings, "checkpoints")
    )
    assert http.get(f"/models/{done.result_model_id}").status_code == 200  # its result stays
    assert http.delete(f"/jobs/{done.id}").status_code == 404


def test_gc_removes_only_unreferenced_artifacts(any_settings: Settings, http, capsys) -> None:
    from service.cli import main

    kept = _run(any_settings, "pretrain", TINY)
    orphan_dir = any_settings.artifact_dir / "models" / "mdl_orphan"
    orphan_dir.mkdir(parents=True)
    (orphan_dir / "model.safetensors").write_bytes(b"0" * 100)
    store.publish(any_settings, orphan_dir)
    running = _job(any_settings, "pretrain", TINY)  # a queued job's future artifacts stay
    future = any_settings.artifact_dir / "models" / derived_id("mdl", running)
    future.mkdir(parents=True)
    (future / "model.safetensors").write_bytes(b"1")
    store.publish(any_settings, future)
    factory = session_factory(any_settings.database_url)

    with factory() as session:
        assert collect_garbage(session, any_settings, min_age=3600, dry_run=True) == []
        assert collect_garbage(session, any_settings, 0, dry_run=True) == ["models/mdl_orphan"]
    assert main(["gc", "--min-age", "0"]) == 0
    out = capsys.readouterr().out
    assert "deleted models/mdl_orphan" in out and "deleted 1 artifacts" in out
    assert _keys(any_settings, "models") == {
        f"models/{kept.result_model_id}",
        f"models/{future.name}",
    }

    # Checkpoint retention: the kept epoch of a job finished long ago goes, its model stays.
    with session_scope(any_settings.database_url) as s:
        s.execute(
            update(JobRecord)
            .where(JobRecord.id == kept.id)
            .values(finished_at=utcnow() - timedelta(hours=2))
        )
    expiring = any_settings.model_copy(update={"checkpoint_retention_seconds": 3600})
    with factory() as session:
        collect_garbage(session, expiring, 0, dry_run=False)
    assert not any(
        k.startswith(f"checkpoints/{kept.id}/") for k in _keys(any_settings, "checkpoints")
    )
    assert http.get(f"/jobs/{kept.id}/checkpoints").json()["items"] == []
    assert f"models/{kept.result_model_id}" in _keys(any_settings, "models")

    ready = http.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["artifact_store_bytes"] > 0
