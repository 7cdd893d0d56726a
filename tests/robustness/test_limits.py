"""Limits per API key (OWASP API4): Idempotency-Keys scoped to the key, a cap on each key's
queued + running jobs, a request rate limit on POST /predict and POST /jobs, and a job's
maximum runtime. In-process app on SQLite (the embedded broker just stores the messages)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from svc_helpers import error_of

from service.core.api_keys import key_id
from service.db import job_records
from service.db.engine import session_scope
from service.db.tables import JobRecord

JOB = {"kind": "pretrain", "config": {"epochs": 1}}


def _headers(key: str, idempotency: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency:
        headers["Idempotency-Key"] = idempotency
    return headers


@pytest.fixture
def keyed(migrated) -> Iterator:  # noqa: ANN001
    """``make(**settings)``: an in-process client on the migrated database, keys ka and kb."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    clients = []

    def make(**values: object) -> TestClient:
        settings = migrated.model_copy(
            update={"api_keys": [SecretStr("ka-secret"), SecretStr("kb-secret")], **values}
        )
        client = TestClient(create_app(settings)).__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_idempotency_keys_are_scoped_to_the_api_key(keyed, migrated) -> None:  # noqa: ANN001
    client = keyed()
    first = client.post("/jobs", json=JOB, headers=_headers("ka-secret", "same-key"))
    assert first.status_code == 202, first.text
    other = client.post("/jobs", json=JOB, headers=_headers("kb-secret", "same-key"))
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    again = client.post("/jobs", json=JOB, headers=_headers("ka-secret", "same-key"))
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    with session_scope(migrated.database_url) as s:
        job = job_records.get_job(s, first.json()["id"])
        assert job.api_key_id == key_id("ka-secret") and "ka-secret" not in job.api_key_id
        stored = [r.idempotency_key for r in s.query(JobRecord).all()]
    assert all("secret" not in k for k in stored), stored  # never the raw API key


def test_cap_on_active_jobs_per_key(keyed) -> None:  # noqa: ANN001
    client = keyed(max_active_jobs_per_key=2)
    ids = [client.post("/jobs", json=JOB, headers=_headers("ka-secret")).json()["id"]
           for _ in range(2)]  # fmt: skip
    capped = client.post("/jobs", json=JOB, headers=_headers("ka-secret"))
    err = error_of(capped, 429, "too_many_active_jobs")
    assert "MAX_ACTIVE_JOBS_PER_KEY=2" in err["message"]
    assert int(capped.headers["Retry-After"]) > 0
    assert client.post("/jobs", json=JOB, headers=_headers("kb-secret")).status_code == 202
    client.post(f"/jobs/{ids[0]}/cancel", headers=_headers("ka-secret"))  # one ends
    assert client.post("/jobs", json=JOB, headers=_headers("ka-secret")).status_code == 202


def test_rate_limit_on_predict_and_jobs_per_key(keyed) -> None:  # noqa: ANN001
    client = keyed(rate_limit_per_second=0.2, rate_limit_burst=3)
    pixels = [[0] * 28 for _ in range(28)]
    for _ in range(3):  # the burst: answered by the route (no model yet: not a 429)
        response = client.post("/predict", json={"pixels": pixels}, headers=_headers("ka-secret"))
        assert response.status_code != 429, response.text
    limited = client.post("/predict", json={"pixels": pixels}, headers=_headers("ka-secret"))
    error_of(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 5
    other = client.post("/predict", json={"pixels": pixels}, headers=_headers("kb-secret"))
    assert other.status_code != 429  # another key has its own bucket
    for _ in range(3):
        assert client.post("/jobs", json=JOB, headers=_headers("ka-secret")).status_code == 202
    error_of(client.post("/jobs", json=JOB, headers=_headers("ka-secret")), 429, "rate_limited")
    assert client.get("/jobs", headers=_headers("ka-secret")).status_code == 200  # reads: free


@pytest.mark.parametrize(
    ("service_limit", "own_limit"),
    [(0.5, None), (0.5, 600.0)],  # the setting alone; the setting below the job's own
    ids=["setting", "setting-caps-job"],
)
def test_job_past_its_maximum_runtime_fails_timeout(
    migrated,
    service_limit: float,
    own_limit: float | None,  # noqa: ANN001
) -> None:
    from service.core.job_spec import PretrainSpec
    from worker import runner

    settings = migrated.model_copy(update={"job_max_runtime_seconds": service_limit})
    spec = PretrainSpec(epochs=50, hidden1=16, hidden2=16, max_train_samples=2000, batch_size=4,
                        max_runtime_seconds=own_limit)  # fmt: skip
    with session_scope(settings.database_url) as s:
        job_id = job_records.create_job(
            s, kind="pretrain", config=spec.model_dump(mode="json"), base_model_id=None,
            epochs=spec.epochs,
        ).id  # fmt: skip
    assert runner.run_job(job_id, settings, worker_id="test:1") == "failed"
    with session_scope(settings.database_url) as s:
        job = job_records.get_job(s, job_id)
        assert (job.status, job.error_code) == ("failed", "timeout"), job.error_message
        assert "maximum runtime of 0.5 s" in job.error_message
        assert job.epoch < 50


def test_idempotency_key_request_includes_max_runtime_seconds(client) -> None:  # noqa: ANN001
    """The new field is part of the request an Idempotency-Key stands for."""
    with_limit = {"kind": "pretrain", "config": {"epochs": 1, "max_runtime_seconds": 60}}
    first = client.post("/jobs", json=with_limit, headers={"Idempotency-Key": "rt-1"})
    assert first.status_code == 202, first.text
    assert first.json()["config"]["max_runtime_seconds"] == 60
    again = client.post("/jobs", json=with_limit, headers={"Idempotency-Key": "rt-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    for other in ({"epochs": 1, "max_runtime_seconds": 61}, {"epochs": 1}):
        reused = client.post("/jobs", json={"kind": "pretrain", "config": other},
                             headers={"Idempotency-Key": "rt-1"})  # fmt: skip
        error_of(reused, 409, "idempotency_key_reused")
    plain = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "rt-2"})
    assert plain.status_code == 202 and plain.json()["config"]["max_runtime_seconds"] is None
    spelled = {"kind": "pretrain", "config": {"epochs": 1, "max_runtime_seconds": None}}
    same = client.post("/jobs", json=spelled, headers={"Idempotency-Key": "rt-2"})
    assert same.status_code == 200 and same.json()["id"] == plain.json()["id"]  # the default


def test_row_from_before_the_field_is_another_request_with_it(client, migrated) -> None:  # noqa: ANN001
    """A job stored before ``max_runtime_seconds`` existed (config and hash without it): the
    same body again replays it, the body plus a limit is another request (409)."""
    from service.core.job_spec import PretrainSpec
    from service.jobs.submit import request_hash

    old_config = PretrainSpec(epochs=1).model_dump(mode="json")
    del old_config["max_runtime_seconds"]
    old_hash = request_hash(None, PretrainSpec(epochs=1)) + "-before-the-field"
    with session_scope(migrated.database_url) as s:
        job_id = job_records.create_job(
            s, kind="pretrain", config=old_config, base_model_id=None, epochs=1,
            idempotency_key="old-key", request_hash=old_hash,
        ).id  # fmt: skip
    same = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "old-key"})
    assert same.status_code == 200 and same.json()["id"] == job_id, same.text
    limited = {"kind": "pretrain", "config": {"epochs": 1, "max_runtime_seconds": 5}}
    error_of(client.post("/jobs", json=limited, headers={"Idempotency-Key": "old-key"}),
             409, "idempotency_key_reused")  # fmt: skip
