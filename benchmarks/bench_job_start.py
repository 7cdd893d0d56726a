"""Job start latency: time from ``POST /jobs`` to the job showing ``running``, idle worker.

Submits ``--jobs`` tiny pre-training jobs one after another (each waits for the previous to
finish, so the worker is idle at every submission) and reports, per job:

* client: from sending the POST to the first ``GET /jobs/{id}`` that says ``running``
  (polled every 5 ms; includes HTTP round trips);
* server: ``started_at - created_at`` from the job record (row committed -> claimed).

Without ``--url`` it starts its own embedded stack (SQLite + SQLite broker) in a temporary
directory: ``lora-service migrate``, ``lora-service api`` and ``lora-service worker``.
Target (issue 3): <= 1 s.

Usage: python benchmarks/bench_job_start.py [--jobs 5] [--url http://127.0.0.1:8000]
                                              [--api-key KEY] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
TINY_JOB = {
    "kind": "pretrain",
    "config": {"epochs": 1, "hidden1": 32, "hidden2": 32, "max_train_samples": 500},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_embedded(root: Path, data_dir: Path) -> tuple[str, list[subprocess.Popen]]:
    """Migrate and start API + worker on SQLite under ``root``; returns (url, processes)."""
    port = _free_port()
    env = {
        **os.environ,  # passed through to the children, which read it through Settings
        "DATABASE_URL": f"sqlite:///{root / 'lora.db'}",
        "BROKER_URL": f"sqla+sqlite:///{root / 'broker.db'}",
        "ARTIFACT_DIR": str(root / "artifacts"),
        "DATA_DIR": str(data_dir),
        "MNIST_DOWNLOAD": "false",
        "API_KEYS": "",
        "PORT": str(port),
    }
    exe = shutil.which("lora-service", path=str(Path(sys.executable).parent)) or "lora-service"
    subprocess.run([exe, "migrate"], env=env, cwd=root, check=True, capture_output=True)
    procs = []
    for name in ("api", "worker"):
        log = (root / f"{name}.log").open("wb")
        procs.append(subprocess.Popen([exe, name], env=env, cwd=root, stdout=log, stderr=log))
    deadline = time.monotonic() + 120
    while " ready." not in (root / "worker.log").read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit("worker did not start; see " + str(root / "worker.log"))
        time.sleep(0.2)
    return f"http://127.0.0.1:{port}", procs


def wait_healthy(client: httpx.Client, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("service not healthy")


def measure(client: httpx.Client) -> tuple[float, float]:
    """One job: (client seconds POST -> running, server seconds created -> started)."""
    t0 = time.perf_counter()
    resp = client.post("/jobs", json=TINY_JOB)
    resp.raise_for_status()
    job_id = resp.json()["id"]
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] != "queued":
            break
        time.sleep(0.005)
    client_s = time.perf_counter() - t0
    server_s = (
        datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
    ).total_seconds()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.1)
        job = client.get(f"/jobs/{job_id}").json()
    return client_s, server_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--url", default=None, help="a running service (default: start one)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data",
        help="directory holding MNIST/raw",
    )  # fmt: skip
    args = parser.parse_args()

    procs: list[subprocess.Popen] = []
    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-job-start-")
        url, procs = start_embedded(Path(tmp.name), args.data_dir.resolve())
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            wait_healthy(client)
            results = [measure(client) for _ in range(args.jobs)]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        if tmp is not None:
            tmp.cleanup()

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; service {url}")
    for i, (client_s, server_s) in enumerate(results, 1):
        print(
            f"job {i}: POST -> running {client_s * 1000:7.1f} ms (server {server_s * 1000:6.1f} ms)"
        )
    worst = max(c for c, _ in results)
    median = statistics.median(c for c, _ in results)
    verdict = "PASS" if worst <= TARGET_S else "FAIL"
    print(
        f"median {median * 1000:.1f} ms, max {worst * 1000:.1f} ms, "
        f"target <= {TARGET_S:.0f} s: {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
