"""Event latency: from an epoch's metrics row being committed to its ``metrics`` event
arriving at a client following the live stream (SSE) of ``GET /jobs/{id}/events``.

Starts an API process (``lora-service api``) on its own database (SQLite in a temporary
directory, or ``--database-url``, e.g. a Postgres database, migrated first), submits a job,
then plays the worker in this process: claims the job and records ``--epochs`` epochs with
:func:`service.jobs.state.record_epoch`, one every ``--interval`` seconds, noting the time
right after each commit. A thread follows the stream and notes when each metrics event
arrives. The clock is the same (``time.time`` in one process). Target (issue 11): <= 1 s.

Usage: python benchmarks/bench_events.py [--epochs 20] [--interval 0.25]
                                          [--database-url URL] [--poll-seconds 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(root: Path, database_url: str, poll_seconds: float) -> tuple[str, subprocess.Popen]:
    """Migrate ``database_url`` and start ``lora-service api`` on it; returns (url, process)."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": f"sqla+sqlite:///{root / 'broker.db'}",
        "ARTIFACT_DIR": str(root / "artifacts"),
        "API_KEYS": "",
        "PORT": str(port),
        "EVENT_POLL_SECONDS": str(poll_seconds),
    }
    exe = shutil.which("lora-service", path=str(Path(sys.executable).parent)) or "lora-service"
    subprocess.run([exe, "migrate"], env=env, cwd=root, check=True, capture_output=True)
    log = (root / "api.log").open("wb")
    proc = subprocess.Popen([exe, "api"], env=env, cwd=root, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return url, proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"API did not start; see {root / 'api.log'}")


def follow(url: str, arrived: dict[int, float], done: threading.Event) -> None:
    """Follow the stream; note the arrival time of each metrics event by epoch."""
    with httpx.stream("GET", url, headers={"Accept": "text/event-stream"}, timeout=120) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["type"] == "metrics":
                    arrived[event["data"]["epoch"]] = time.time()
                if event["type"] == "status" and event["data"]["status"] == "cancelled":
                    break
    done.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between epochs")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--poll-seconds", type=float, default=0.2, help="EVENT_POLL_SECONDS")
    args = parser.parse_args()

    from service.db.engine import session_factory
    from service.jobs import state

    tmp = tempfile.TemporaryDirectory(prefix="bench-events-")
    root = Path(tmp.name)
    database_url = args.database_url or f"sqlite:///{root / 'lora.db'}"
    url, api = start_api(root, database_url, args.poll_seconds)
    committed: dict[int, float] = {}
    arrived: dict[int, float] = {}
    try:
        job = httpx.post(f"{url}/jobs", json={"kind": "pretrain", "config": {"epochs": 500}})
        job_id = job.json()["id"]
        factory = session_factory(database_url)
        with factory() as session:
            assert state.claim_job(session, job_id, "bench") is not None
        done = threading.Event()
        reader = threading.Thread(
            target=follow, args=(f"{url}/jobs/{job_id}/events", arrived, done), daemon=True
        )
        reader.start()
        time.sleep(1.0)  # the stream is open and has sent the first events
        for epoch in range(1, args.epochs + 1):
            values = {"train_loss": 0.1, "val_loss": 0.1, "val_accuracy": 0.9}
            with factory() as session:
                assert state.record_epoch(session, job_id, "bench", epoch, values)
            committed[epoch] = time.time()
            time.sleep(args.interval)
        httpx.post(f"{url}/jobs/{job_id}/cancel")
        with factory() as session:
            state.finish_cancelled(session, job_id, "bench")
        done.wait(30)
    finally:
        api.terminate()
        api.wait(30)
        tmp.cleanup()

    latencies = [arrived[e] - committed[e] for e in committed if e in arrived]
    missing = sorted(set(committed) - set(arrived))
    latencies.sort()
    p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)] if latencies else float("nan")
    backend = database_url.split(":", 1)[0]
    print(f"event latency, commit -> SSE client ({backend}, EVENT_POLL_SECONDS "
          f"{args.poll_seconds:g}, {len(latencies)} metrics events, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs):")  # fmt: skip
    print(f"  median {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms   target <= {TARGET_S * 1000:.0f} ms: "
          f"{'met' if max(latencies) <= TARGET_S and not missing else 'MISSED'}")  # fmt: skip
    if missing:
        print(f"  events never received: epochs {missing}")
    return 0 if latencies and max(latencies) <= TARGET_S and not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
