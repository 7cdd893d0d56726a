"""The production path across hosts: Postgres + Redis, an ``s3://`` artifact store (moto's
S3 server over HTTP) and three processes that each have their own, unshared ARTIFACT_DIR
(``host-api``, ``host-a``, ``host-b``): the store is the only thing they share besides the
database and the broker.

One pre-training, then a LoRA fine-tune whose worker is SIGKILLed after epoch 1; the other
worker (which never saw the first one's files) takes the job over and resumes it from the
training state it downloads from the store; ``/predict`` then serves the adapter from the
API process, which has never seen any worker's files. Corrupt objects give a clear 503 or
a failed job with a code, never a 500; deleting an adapter deletes its objects.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_stack import (
    Stack,
    mnist_dir,
    postgres_redis_backend,
    running_stack,
    services_reachable,
    submit,
    watch,
)
from s3_server import S3Server

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

HOSTS = ("host-a", "host-b")
API_CACHE_BYTES = 400_000
SMALL = {"hidden1": 32, "hidden2": 32}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Stack]:
    """The API (host-api) running on a fresh database, queue and bucket; no worker yet."""
    if not services_reachable():
        pytest.skip("Postgres and Redis are not running on 127.0.0.1")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    root = tmp_path_factory.mktemp("multi_host")
    backend = postgres_redis_backend(root, mnist_dir())
    backend.env.update(s3_server.env(s3_server.new_bucket()))
    backend.env["ARTIFACT_DIR"] = str(root / "host-api")
    backend.env["ARTIFACT_CACHE_BYTES"] = str(API_CACHE_BYTES)
    with running_stack(backend, root, workers=0) as stack:
        yield stack


def _files(directory: Path, sub: str) -> list[Path]:
    return [p for p in (directory / sub).rglob("*") if p.is_file()] if directory.exists() else []


def _bucket_keys(s3: S3Server, stack: Stack) -> list[str]:
    bucket = stack.env["ARTIFACT_URL"].removeprefix("s3://").split("/")[0]
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _corrupt(s3: S3Server, stack: Stack, key: str) -> None:
    """Flip the last byte of every data object under ``artifacts/{key}/v/``."""
    bucket = stack.env["ARTIFACT_URL"].removeprefix("s3://").split("/")[0]
    client = s3.client()
    for name in _bucket_keys(s3, stack):
        if name.startswith(f"artifacts/{key}/v/"):
            body = client.get_object(Bucket=bucket, Key=name)["Body"].read()
            client.put_object(Bucket=bucket, Key=name, Body=body[:-1] + bytes([body[-1] ^ 1]))


def test_two_hosts_share_only_the_store(hosts: Stack, s3_server: S3Server) -> None:
    from robust_helpers import (
        SLOW_EPOCHS,
        epochs_done,
        freeze,
        job_row,
        kill,
        launch_workers,
        running_on,
        wait_for,
        wait_ready,
    )

    stack = hosts
    root = stack.root
    workers = []
    for host in HOSTS:
        workers += launch_workers(
            stack,
            1,
            ARTIFACT_DIR=str(root / host),
            WORKER_HEARTBEAT_FILE=str(root / host / "worker.heartbeat"),
        )
    wait_ready(workers)
    api_dir = root / "host-api"
    with stack.client() as http:
        pre = submit(
            http, {"kind": "pretrain", "config": {"epochs": 1, "max_train_samples": 3000, **SMALL}}
        )
        pre_final, _ = watch(http, pre["id"], timeout=120)
        assert pre_final["status"] == "succeeded", (pre_final, stack.logs())
        base_id = pre_final["result"]["model_id"]
        assert f"artifacts/models/{base_id}/manifest.json" in _bucket_keys(s3_server, stack)
        for host in HOSTS:  # the worker's scratch copy is gone once published
            assert _files(root / host, f"models/{base_id}") == []

        body = {
            "kind": "finetune_lora",
            "base_model_id": base_id,
            "config": {
                "r": 4,
                "epochs": 3,
                "keep_checkpoints": 3,
                "select": "last",
                **{k: v for k, v in SLOW_EPOCHS.items() if k not in SMALL},
            },
        }
        job_id = submit(http, body)["id"]
        _, victim = running_on(stack, job_id, attempt=1)
        wait_for(lambda: job_row(stack, job_id).epoch >= 1, 120, "epoch 1 recorded", 0.01)
        freeze(victim)
        assert job_row(stack, job_id).epoch == 1, "epoch 2 finished before the freeze"
        assert f"artifacts/checkpoints/{job_id}/state/manifest.json" in _bucket_keys(
            s3_server, stack
        )
        kill(victim)

        _, resumer = running_on(stack, job_id, attempt=2)
        final, _ = watch(http, job_id, timeout=120)
        assert final["status"] == "succeeded", (final, stack.logs())
        assert epochs_done(stack.workers, job_id) == {victim.name: [1], resumer.name: [2, 3]}
        out = resumer.output()
        assert f"job {job_id}: training state restored from the store" in out
        assert f"job {job_id} resumes after epoch 1 (attempt 2)" in out
        adapter_id = final["result"]["adapter_id"]
        assert (final["result"]["device"], final["result"]["device_name"]) == ("cpu", "cpu")
        keys = _bucket_keys(s3_server, stack)
        assert f"artifacts/adapters/{adapter_id}/manifest.json" in keys
        state = f"artifacts/checkpoints/{job_id}/state/"
        wait_for(  # removed right after the success commit that the API already shows
            lambda: not any(k.startswith(state) for k in _bucket_keys(s3_server, stack)),
            15,
            "the training state removed from the store",
        )
        assert {
            f"artifacts/checkpoints/{job_id}/epoch-000{e}/manifest.json" for e in (1, 2, 3)
        } <= set(keys)

        # The API has never seen a worker's files: it serves from the store through its cache.
        for sub in ("models", "adapters", "checkpoints"):
            assert _files(api_dir, sub) == []
        pixels = [[(x * y) % 256 for x in range(28)] for y in range(28)]
        resp = http.post("/predict", json={"pixels": pixels, "adapter_id": adapter_id})
        assert resp.status_code == 200, resp.text
        assert resp.json()["adapter_id"] == adapter_id
        cached = _files(api_dir, ".cache")
        assert cached and sum(p.stat().st_size for p in cached) <= API_CACHE_BYTES

        # A kept epoch published by the API, from the store, then served.
        resp = http.post(f"/jobs/{job_id}/checkpoints/1/publish")
        assert resp.status_code == 201, resp.text
        epoch_adapter = resp.json()["id"]
        assert f"artifacts/adapters/{epoch_adapter}/manifest.json" in _bucket_keys(s3_server, stack)

        # Corrupt objects: a clear 503 with a code, nothing half-loaded.
        _corrupt(s3_server, stack, f"adapters/{epoch_adapter}")
        resp = http.post("/predict", json={"pixels": pixels, "adapter_id": epoch_adapter})
        assert resp.status_code == 503, resp.text
        error = resp.json()["error"]
        assert error["code"] == "artifact_unavailable" and "artifact_corrupt" in error["message"]
        _corrupt(s3_server, stack, f"checkpoints/{job_id}/epoch-0002")
        resp = http.post(f"/jobs/{job_id}/checkpoints/2/publish")
        assert resp.status_code == 503 and "artifact_corrupt" in resp.text, resp.text

        # A worker on a fresh host (its cache emptied) meets a corrupt base model: failed job.
        _corrupt(s3_server, stack, f"models/{base_id}")
        for host in HOSTS:
            shutil.rmtree(root / host / ".cache", ignore_errors=True)
        bad = submit(http, {**body, "config": {"r": 4, "epochs": 1, "max_train_samples": 500}})
        bad_final, _ = watch(http, bad["id"], timeout=60)
        assert bad_final["status"] == "failed", bad_final
        assert bad_final["error"]["code"] == "base_model_unreadable", bad_final
        assert "artifact_corrupt" in bad_final["error"]["message"]

        # Deleting an adapter deletes its objects.
        assert http.delete(f"/adapters/{epoch_adapter}").status_code == 204
        assert not any(
            k.startswith(f"artifacts/adapters/{epoch_adapter}/")
            for k in _bucket_keys(s3_server, stack)
        )
