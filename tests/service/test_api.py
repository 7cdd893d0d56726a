"""Every jobs/models/adapters/health endpoint: not-found and validation answers in the error
envelope, config defaults, pagination (in-process client on the embedded configuration)."""

from __future__ import annotations

import pytest
from svc_helpers import add_model, error_of

from service.core.job_spec import FinetuneFullSpec, FinetuneLoraSpec, PretrainSpec

UNKNOWN = "job_doesnotexist"


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("get", f"/jobs/{UNKNOWN}", "job_not_found"),
        ("post", f"/jobs/{UNKNOWN}/cancel", "job_not_found"),
        ("get", f"/jobs/{UNKNOWN}/metrics", "job_not_found"),
        ("get", "/models/mdl_nope", "model_not_found"),
        ("get", "/adapters/adp_nope", "adapter_not_found"),
        ("get", "/adapters/adp_nope/archive", "adapter_not_found"),
        ("delete", "/adapters/adp_nope", "adapter_not_found"),
        ("get", "/no/such/route", "not_found"),
    ],
)
def test_read_unknown_id_not_found(client, method: str, path: str, code: str) -> None:
    error_of(getattr(client, method)(path), 404, code)


def test_create_job_unknown_base_model_not_found(client) -> None:
    resp = client.post("/jobs", json={"kind": "finetune_lora", "base_model_id": "mdl_nope"})
    error_of(resp, 404, "model_not_found", "base_model_id")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "kind"),
        ({"kind": "distill"}, "kind"),
        ({"kind": "pretrain", "base_model_id": "mdl_x"}, "base_model_id"),
        ({"kind": "finetune_full"}, "base_model_id"),
        ({"kind": "pretrain", "colour": "red"}, "colour"),
        ({"kind": "pretrain", "config": {"unknown": 1}}, "config.unknown"),
        ({"kind": "pretrain", "config": {"epochs": 0}}, "config.epochs"),
        ({"kind": "pretrain", "config": {"epochs": 10_000}}, "config.epochs"),
        ({"kind": "pretrain", "config": {"lr": 0}}, "config.lr"),
        ({"kind": "pretrain", "config": {"lr": 5}}, "config.lr"),
        ({"kind": "pretrain", "config": {"weight_decay": -1}}, "config.weight_decay"),
        ({"kind": "pretrain", "config": {"batch_size": 0}}, "config.batch_size"),
        ({"kind": "pretrain", "config": {"seed": -1}}, "config.seed"),
        ({"kind": "pretrain", "config": {"hidden1": 0}}, "config.hidden1"),
        ({"kind": "pretrain", "config": {"hidden2": 100_000}}, "config.hidden2"),
        ({"kind": "pretrain", "config": {"dropout": 1.0}}, "config.dropout"),
        ({"kind": "pretrain", "config": {"max_train_samples": 0}}, "config.max_train_samples"),
        ({"kind": "pretrain", "config": {"digits": [3]}}, "config.digits"),
        ({"kind": "pretrain", "config": {"digits": [1, 1, 2]}}, "config.digits"),
        ({"kind": "pretrain", "config": {"digits": [1, 10]}}, "config.digits.1"),
        ({"kind": "pretrain", "config": {"r": 4}}, "config.r"),
        ({"kind": "finetune_lora", "base_model_id": "m", "config": {"r": 0}}, "config.r"),
        ({"kind": "finetune_lora", "base_model_id": "m", "config": {"lora_alpha": 0}}, None),
        (
            {"kind": "finetune_lora", "base_model_id": "m", "config": {"target_modules": []}},
            "config.target_modules",
        ),
        (
            {"kind": "finetune_lora", "base_model_id": "m", "config": {"target_modules": ["fc"]}},
            "config.target_modules.0",
        ),
        (
            {
                "kind": "finetune_lora",
                "base_model_id": "m",
                "config": {"target_modules": ["linear1", "linear1"]},
            },
            "config.target_modules",
        ),
        ({"kind": "finetune_full", "base_model_id": "m", "config": {"r": 8}}, "config.r"),
    ],
)
def test_create_job_invalid_config_422(client, body: dict, param: str | None) -> None:
    err = error_of(client.post("/jobs", json=body), 422, "validation_error")
    if param is not None:
        assert err["param"] == param, err
    assert client.get("/jobs").json()["total"] == 0  # nothing was created


def test_create_job_not_json(client) -> None:
    resp = client.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    error = error_of(resp, 400, "invalid_json", None)
    assert "not valid JSON" in error["message"]
    error_of(client.post("/jobs", json=[1, 2]), 422, "validation_error")


def test_create_finetune_digits_must_match_base_head(client, base_model: str) -> None:
    body = {"kind": "finetune_full", "base_model_id": base_model, "config": {"digits": [5, 6]}}
    error_of(client.post("/jobs", json=body), 422, "validation_error", "config.classes")


def test_create_lora_rank_bounded_by_targeted_layers(client, base_model: str) -> None:
    # base is 784-32-48-5: linear2's input (32) is the smallest targeted width.
    body = {"kind": "finetune_lora", "base_model_id": base_model, "config": {"r": 33}}
    error_of(client.post("/jobs", json=body), 422, "validation_error", "config.r")
    body["config"] = {"r": 40, "target_modules": ["linear3"]}  # linear3's input is 48
    assert client.post("/jobs", json=body).status_code == 202
    body["config"] = {"r": 49, "target_modules": ["linear3"]}
    error_of(client.post("/jobs", json=body), 422, "validation_error", "config.r")


def test_create_job_fills_defaults(client, base_model: str) -> None:
    resp = client.post("/jobs", json={"kind": "pretrain"})
    assert resp.status_code == 202
    job = resp.json()
    assert resp.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempt"] == 0 and job["result"] is None
    assert job["config"] == PretrainSpec().model_dump()
    assert job["config"]["classes"] == [0, 1, 2, 3, 4] and job["config"]["epochs"] == 30
    assert (job["config"]["lr"], job["config"]["weight_decay"]) == (1e-3, 1e-4)
    assert job["progress"] == {"epoch": 0, "epochs": 30, "fraction": 0.0, "eta_seconds": None}

    full = client.post("/jobs", json={"kind": "finetune_full", "base_model_id": base_model})
    assert full.json()["config"] == FinetuneFullSpec().model_dump()
    assert full.json()["config"]["lr"] == 1e-5 and full.json()["config"]["epochs"] == 10
    lora = client.post("/jobs", json={"kind": "finetune_lora", "base_model_id": base_model})
    config = lora.json()["config"]
    assert config == FinetuneLoraSpec().model_dump()
    assert (config["r"], config["lora_alpha"], config["lr"]) == (8, 16.0, 1e-3)
    assert config["target_modules"] == ["linear1", "linear2", "linear3"]
    assert config["classes"] == [5, 6, 7, 8, 9]
    assert (config["dropout"], config["lr_schedule"]) == (0.0, "cosine")
    big = client.post(
        "/jobs", json={"kind": "finetune_lora", "base_model_id": base_model, "config": {"r": 16}}
    )
    assert big.status_code == 202, big.text
    assert big.json()["config"]["lora_alpha"] == 32.0  # default alpha = 2 r


def test_list_jobs_filters_and_pages(client, base_model: str) -> None:
    for _ in range(3):
        client.post("/jobs", json={"kind": "pretrain"})
    client.post("/jobs", json={"kind": "finetune_full", "base_model_id": base_model})
    page = client.get("/jobs", params={"limit": 2}).json()
    assert (page["total"], len(page["items"]), page["limit"], page["offset"]) == (4, 2, 2, 0)
    rest = client.get("/jobs", params={"limit": 2, "offset": 2}).json()["items"]
    assert {j["id"] for j in page["items"]}.isdisjoint({j["id"] for j in rest})
    assert client.get("/jobs", params={"kind": "finetune_full"}).json()["total"] == 1
    assert client.get("/jobs", params={"status": "running"}).json()["total"] == 0


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/jobs", {"status": "done"}, "status"),
        ("/jobs", {"kind": "distill"}, "kind"),
        ("/jobs", {"limit": 0}, "limit"),
        ("/jobs", {"limit": 10_000}, "limit"),
        ("/jobs", {"offset": -1}, "offset"),
        ("/jobs", {"limit": "many"}, "limit"),
        ("/models", {"kind": "adapter"}, "kind"),
        ("/models", {"limit": 0}, "limit"),
        ("/adapters", {"limit": 10_000}, "limit"),
        ("/adapters", {"offset": "x"}, "offset"),
    ],
)
def test_list_invalid_query_422(client, path: str, params: dict, param: str) -> None:
    error_of(client.get(path, params=params), 422, "validation_error", param)


def test_metrics_format_validated_and_csv_of_new_job(client) -> None:
    job_id = client.post("/jobs", json={"kind": "pretrain"}).json()["id"]
    error_of(client.get(f"/jobs/{job_id}/metrics", params={"format": "xml"}), 422,
             "validation_error", "format")  # fmt: skip
    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert metrics == {"job_id": job_id, "status": "queued", "epochs": [], "test": None}
    csv = client.get(f"/jobs/{job_id}/metrics", params={"format": "csv"}).text
    assert csv == (
        "epoch,train_loss,val_loss,val_accuracy,base_val_accuracy,epoch_seconds,samples_per_second\n"
    )


def test_cancel_queued_job_at_once(client) -> None:
    job_id = client.post("/jobs", json={"kind": "pretrain"}).json()["id"]
    resp = client.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "cancelled" and body["finished_at"] and body["cancel_requested"]


def test_models_and_adapters_lists(client, migrated, base_model: str) -> None:
    add_model(migrated.database_url)
    models = client.get("/models", params={"kind": "pretrained"}).json()
    assert models["total"] == 2
    model = client.get(f"/models/{base_model}").json()
    assert model["classes"] == [0, 1, 2, 3, 4] and "path" not in model
    assert client.get("/adapters").json() == {"items": [], "total": 0, "limit": 50, "offset": 0}


def test_health_ok_and_docs_served(client) -> None:
    ready = {"status": "ok", "database": "ok", "broker": "ok", "artifact_store": "ok",
             "artifact_store_bytes": 0}  # fmt: skip
    assert client.get("/health").json() == client.get("/health/ready").json() == ready
    assert client.get("/health/live").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/metrics",
                 "/models/{model_id}", "/adapters/{adapter_id}/archive", "/health"):  # fmt: skip
        assert path in paths


def test_broker_down_health_503_and_submit_queues_for_later(migrated) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    settings = migrated.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    with TestClient(create_app(settings)) as client:
        err = error_of(client.get("/health"), 503, "unhealthy")
        assert "broker" in err["message"]
        assert "127.0.0.1" not in err["message"]  # connection details stay in the log
        assert client.get("/health").headers["Retry-After"].isdigit()
        created = client.post("/jobs", json={"kind": "pretrain"})
        assert created.status_code == 202, created.text
        job = client.get("/jobs").json()["items"][0]
        assert job["id"] == created.json()["id"] and job["status"] == "queued"
    # flagged unsent: the next reaper pass sends it, however young the job is
    from service.db.engine import session_scope
    from service.jobs.leases import reap

    sent: list[str] = []
    with session_scope(migrated.database_url) as session:
        reap(session, lease_seconds=30, max_attempts=3, resend_after=3600, send=sent.append)
    assert sent == [job["id"]]
