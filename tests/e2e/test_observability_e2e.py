"""Observability end to end: ``GET /metrics`` of two real API processes sharing one
multiprocess directory, a real worker's metrics port and heartbeat file, JSON logs.

One stack: a fresh Postgres database, a private ``redis-server`` on a free port (stopped
and restarted by a test), two ``lora-service api`` processes (``PROMETHEUS_MULTIPROC_DIR``
shared, ``LOG_FORMAT=json``) and one ``lora-service worker`` whose first metrics port is
taken by the test, so it must pick another.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e_stack import (
    API_COMMAND,
    API_KEY,
    SMALL_NET,
    WORKER_COMMAND,
    Proc,
    Stack,
    free_port,
    mnist_dir,
    postgres_redis_backend,
    run_command,
    services_reachable,
    start,
    submit,
    watch,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
SEVEN = [[0] * 28 for _ in range(10)] + [[0] * 8 + [255] * 12 + [0] * 8] + [[0] * 28] * 17
HEARTBEAT_S, MAX_AGE_S = 0.5, 3.0


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, frozenset(labels)): value}`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@dataclass
class Obs:
    stack: Stack
    api2: Proc
    api2_url: str
    worker: Proc
    heartbeat: Path
    redis: subprocess.Popen
    redis_cmd: list[str]
    taken_port: int

    def scrape(self, url: str | None = None) -> dict:
        with httpx.Client(base_url=url or self.stack.url, timeout=30) as http:
            resp = http.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(resp.text)

    def worker_port(self) -> int:
        return json.loads(self.heartbeat.read_text())["metrics_port"]

    def scrape_worker(self) -> dict:
        return parse(httpx.get(f"http://127.0.0.1:{self.worker_port()}/metrics").text)

    def worker_health(self) -> subprocess.CompletedProcess:
        command = ["lora-service", "worker-health", "--file", str(self.heartbeat)]
        return run_command([*command, "--max-age", str(MAX_AGE_S)], {}, self.stack.root, 60)

    def logs(self) -> str:
        return "\n".join(p.output() for p in (self.stack.api, self.api2, self.worker) if p)


def _wait_http(url: str, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, proc.output()[-3000:]
        try:
            if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{proc.name} not ready:\n{proc.output()[-3000:]}")


@pytest.fixture(scope="module")
def obs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Obs]:
    if not services_reachable() or shutil.which("redis-server") is None:
        pytest.skip("needs Postgres on 127.0.0.1 and redis-server")
    root = tmp_path_factory.mktemp("observability")
    redis_port = free_port()
    redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    redis_cmd += ["--appendonly", "yes", "--dir", str(root)]
    redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    backend = postgres_redis_backend(root, mnist_dir())
    multiproc = root / "prom"
    multiproc.mkdir()
    backend.env |= {
        "BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LOG_FORMAT": "json",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    stack = Stack(backend, root)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    heartbeat = root / "worker0.heartbeat"
    procs: list[Proc] = []
    try:
        stack.migrate()
        api_env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
        stack.backend.env |= api_env
        stack.start_api()
        api2_port = free_port()
        api2 = start("api2", API_COMMAND, {**stack.env, "PORT": str(api2_port)}, root)
        procs.append(api2)
        api2_url = f"http://127.0.0.1:{api2_port}"
        for key in api_env:  # the worker keeps its own registry
            del stack.backend.env[key]
        worker_env = {
            **stack.env,
            "WORKER_METRICS_PORT": str(taken),
            "WORKER_HEARTBEAT_FILE": str(heartbeat),
            "WORKER_HEARTBEAT_FILE_SECONDS": str(HEARTBEAT_S),
        }
        worker = start("worker0", WORKER_COMMAND, worker_env, root)
        procs.append(worker)
        _wait_http(api2_url, api2)
        deadline = time.monotonic() + 90
        while " ready." not in worker.output():
            assert worker.popen.poll() is None and time.monotonic() < deadline, worker.output()
            time.sleep(0.2)
        yield Obs(stack, api2, api2_url, worker, heartbeat, redis, redis_cmd, taken)
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
            proc.stop()
        stack.stop()
        blocker.close()
        redis.terminate()
        redis.wait(10)
        backend.cleanup()


@pytest.fixture(scope="module")
def trained(obs: Obs) -> dict:
    """M = 3 jobs run by the worker: a pre-training, a LoRA fine-tune of it, and a long
    pre-training that is cancelled once the worker was checked live while it trains, and
    live again with Redis stopped for longer than the health check's max age."""
    during: dict = {}
    with obs.stack.client() as http:
        small = {"epochs": 2, "max_train_samples": 1000, **SMALL_NET}
        base = submit(http, {"kind": "pretrain", "config": small})
        base_final, _ = watch(http, base["id"])
        assert base_final["status"] == "succeeded", base_final
        base_id = base_final["result"]["model_id"]
        config = {"epochs": 2, "r": 4, "lora_alpha": 8, "max_train_samples": 500}
        lora = submit(http, {"kind": "finetune_lora", "base_model_id": base_id, "config": config})
        lora_final, _ = watch(http, lora["id"])
        assert lora_final["status"] == "succeeded", lora_final
        long = submit(http, {"kind": "pretrain", "config": {**small, "epochs": 500}})
        watch(http, long["id"], until={"running"})
        during["training"] = obs.worker_health()
        during["metrics_while_running"] = obs.scrape_worker()
        obs.redis.send_signal(signal.SIGTERM)
        obs.redis.wait(10)
        time.sleep(MAX_AGE_S + 1)
        during["redis_down"] = obs.worker_health()
        during["still_running"] = http.get(f"/jobs/{long['id']}").json()["status"]
        obs.redis = subprocess.Popen(obs.redis_cmd, stdout=subprocess.DEVNULL)
        assert http.post(f"/jobs/{long['id']}/cancel").status_code in (200, 202)
        long_final, _ = watch(http, long["id"], timeout=120)
        assert long_final["status"] == "cancelled", long_final
    return {"base": base_final, "lora": lora_final, "long": long_final, **during}


def test_worker_is_live_while_training_and_while_redis_is_away(obs: Obs, trained: dict) -> None:
    assert trained["training"].returncode == 0, trained["training"].stdout
    assert "live" in trained["training"].stdout
    assert trained["still_running"] == "running"
    assert trained["redis_down"].returncode == 0, trained["redis_down"].stdout
    running = trained["metrics_while_running"]
    long_id = trained["long"]["id"]
    assert value(running, "lora_worker_current_job", job_id=long_id, kind="pretrain") == 1
    assert value(running, "lora_worker_busy") == 1


def test_worker_metrics_count_the_jobs(obs: Obs, trained: dict) -> None:
    assert obs.worker_port() != obs.taken_port  # the first port was taken: it moved on
    m = obs.scrape_worker()
    cancelled_epochs = trained["long"]["progress"]["epoch"]
    for kind, started, epochs in (("pretrain", 2, 2 + cancelled_epochs), ("finetune_lora", 1, 2)):
        assert value(m, "lora_worker_jobs_started_total", kind=kind) == started
        assert value(m, "lora_worker_jobs_finished_total", kind=kind, status="succeeded") == 1
        assert value(m, "lora_worker_epoch_seconds_count", kind=kind) == epochs
        assert value(m, "lora_worker_samples_per_second", kind=kind) > 0
    finished = {"kind": "pretrain", "status": "cancelled"}
    assert value(m, "lora_worker_jobs_finished_total", **finished) == 1
    assert not [k for k in m if k[0] == "lora_worker_jobs_failed_total"]
    assert not [k for k in m if k[0] == "lora_worker_current_job"]  # removed when it ended
    assert value(m, "lora_worker_device_info", device="cpu") == 1
    assert value(m, "lora_worker_busy") == 0


def test_predictions_and_jobs_counted_once_across_two_api_processes(
    obs: Obs, trained: dict
) -> None:
    base_id = trained["base"]["result"]["model_id"]
    adapter_id = trained["lora"]["result"]["adapter_id"]
    before = obs.scrape()
    n_base, n_adapter = 4, 3
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for url, n, body in (
        (obs.stack.url, n_base, {"pixels": SEVEN, "model_id": base_id}),
        (obs.api2_url, n_adapter, {"pixels": SEVEN, "adapter_id": adapter_id}),
    ):
        for _ in range(n):
            assert httpx.post(f"{url}/predict", json=body, headers=headers).status_code == 200
    job_id = trained["lora"]["id"]
    assert httpx.get(f"{obs.api2_url}/jobs/{job_id}", headers=headers).status_code == 200

    for url in (obs.stack.url, obs.api2_url):  # either process answers the same totals
        after = obs.scrape(url)

        def moved(name: str, after: dict = after, **labels: str) -> float:
            return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

        assert moved("lora_predictions_total", model=base_id, adapter="none") == n_base
        assert moved("lora_predictions_total", model=base_id, adapter=adapter_id) == n_adapter
        ok = {"route": "/predict", "method": "POST", "status": "200"}
        assert moved("lora_http_requests_total", **ok) == n_base + n_adapter
        n = n_base + n_adapter
        timed = {"route": "/predict", "method": "POST"}
        assert moved("lora_http_request_duration_seconds_count", **timed) == n
        assert moved("lora_predict_batch_size_count") == moved("lora_predict_batch_size_sum") == n
        assert moved("lora_predict_forward_seconds_count") == n
        assert moved("lora_predict_queue_wait_seconds_count") == n
        route = {"route": "/jobs/{job_id}", "method": "GET", "status": "200"}
        assert value(after, "lora_http_requests_total", **route) >= 1
        assert not [k for k in after if job_id in str(k)]  # never the raw path
        assert value(after, "lora_cache_resident", cache="model") == 2  # one per process
        assert value(after, "lora_cache_resident", cache="adapter") == 1
        assert value(after, "lora_cache_resident_bytes", cache="adapter") > 0
        assert value(after, "lora_cache_misses_total", cache="adapter") == 1
        assert value(after, "lora_cache_hits_total", cache="adapter") >= n_adapter - 1
        # job gauges come from the database once per scrape, not once per process
        for kind, status, n in (
            ("pretrain", "succeeded", 1),
            ("pretrain", "cancelled", 1),
            ("finetune_lora", "succeeded", 1),
        ):
            assert value(after, "lora_jobs", kind=kind, status=status) == n
        assert value(after, "lora_jobs", kind="finetune_full", status="queued") == 0

    deleted = httpx.delete(f"{obs.stack.url}/adapters/{adapter_id}", headers=headers)
    assert deleted.status_code == 204, deleted.text
    for url in (obs.stack.url, obs.api2_url):
        assert not [k for k in obs.scrape(url) if adapter_id in str(k)]


def test_metrics_follow_api_keys(obs: Obs) -> None:
    resp = httpx.get(f"{obs.stack.url}/metrics")
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{obs.stack.url}/health/live").json() == {"status": "ok"}


def test_logs_are_json_with_ids_and_no_secrets(obs: Obs, trained: dict) -> None:
    rid = f"test-{secrets.token_hex(4)}"
    resp = httpx.get(
        f"{obs.stack.url}/jobs/job_missing",
        headers={"Authorization": f"Bearer {API_KEY}", "X-Request-ID": rid},
    )
    assert resp.status_code == 404 and resp.headers["x-request-id"] == rid
    assert resp.json()["error"]["request_id"] == rid
    unauth = httpx.get(f"{obs.stack.url}/jobs")
    assert unauth.json()["error"]["request_id"] == unauth.headers["x-request-id"]
    time.sleep(0.5)
    job_id = trained["lora"]["id"]
    lines = {}
    for proc in (obs.stack.api, obs.worker):
        objects = [json.loads(ln) for ln in proc.output().splitlines() if ln.startswith("{")]
        assert len(objects) > 5, proc.output()[-2000:]
        for obj in objects:
            assert {"time", "level", "logger", "message"} <= set(obj), obj
        lines[proc.name] = objects
    assert any(o.get("request_id") == rid for o in lines["api"])
    assert any(job_id in o["message"] for o in lines["api"])  # submitted there
    worker_lines = [o for o in lines["worker0"] if o.get("job_id") == job_id]
    assert worker_lines and all(o["worker"] for o in worker_lines)
    assert {o.get("attempt") for o in worker_lines} >= {1}
    text = obs.logs()
    assert API_KEY not in text and WEBHOOK_SECRET not in text
    assert WEBHOOK_SECRET.split("_", 1)[1][:16] not in text


def test_hung_worker_is_not_live(obs: Obs, trained: dict) -> None:
    assert obs.worker_health().returncode == 0
    obs.worker.popen.send_signal(signal.SIGSTOP)
    try:
        time.sleep(MAX_AGE_S + 1)
        hung = obs.worker_health()
    finally:
        obs.worker.popen.send_signal(signal.SIGCONT)
    assert hung.returncode == 1 and "NOT live" in hung.stdout, hung.stdout
    deadline = time.monotonic() + 10
    while obs.worker_health().returncode != 0:
        assert time.monotonic() < deadline, "worker did not come back"
