"""Soak: small jobs and predictions for ``--minutes`` while faults are injected at random.

Starts its own stack: a private ``redis-server`` on a free port, a fresh database on the
machine's Postgres (127.0.0.1:5432, user postgres), one ``lora-service api`` and
``--workers`` ``lora-service worker`` processes (heartbeat 0.5 s, lease 4 s, reaper 0.5 s,
``QUEUED_RESEND_SECONDS`` 3 s). A client keeps about ``--backlog`` jobs unfinished
(pretrain, 2 epochs on 500 images, each with an ``Idempotency-Key``: a 503 is retried with
the same key) and sends ``/predict`` requests in between. Every 8-25 s (seeded by
``--seed``) one fault: SIGKILL a worker (a new one is started), SIGTERM a worker (hand-back;
a new one is started), Redis killed and back after 1-6 s with or without its data, or the
database refusing connections for 1-6 s (``pg_terminate_backend``).

Afterwards (faults stopped, up to 5 min for the backlog to drain) it checks the invariants
and prints one JSON line:

* every job ended (``succeeded``/``failed``/``cancelled``): ``lost`` counts those that did not;
* no epoch of a job finished in two runs (workers' ``epoch k/n done`` lines): ``twice``;
* one metrics row per epoch and name: ``metric_rows_bad``;
* every succeeded job's model loads (``models.checkpoint.load_model``): ``artifact_bad``;
* HTTP answers by status; ``unexpected_5xx`` = 5xx other than the documented 503s.

Usage: ``python benchmarks/soak.py --minutes 10 --seed 1`` (exit status 1 if an invariant
fails).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "tests/e2e", "tests/robustness", "tests/service"):
    sys.path.insert(0, str(ROOT / sub))

from e2e_stack import (  # noqa: E402
    TERMINAL,
    Stack,
    mnist_dir,
    postgres_redis_backend,
)
from fault_servers import RedisServer, cut_database, database_name  # noqa: E402
from robust_helpers import EPOCH_DONE, alive, launch_workers, wait_ready  # noqa: E402

ENV = {
    "HEARTBEAT_SECONDS": "0.5",
    "LEASE_SECONDS": "4",
    "REAPER_SECONDS": "0.5",
    "QUEUED_RESEND_SECONDS": "3",
    "MAX_ATTEMPTS": "10",  # faults here are many per job; a job should not run out of tries
    "OMP_NUM_THREADS": "1",
}
JOB = {"kind": "pretrain", "config": {"epochs": 2, "max_train_samples": 500, "hidden1": 32,
                                      "hidden2": 32}}  # fmt: skip
FAULTS = ("kill_worker", "term_worker", "redis_restart", "redis_lost", "db_cut")


class Client:
    """The soak's HTTP client: counts every answer by status."""

    def __init__(self, stack: Stack) -> None:
        self.http = stack.client()
        self.statuses: Counter[int] = Counter()
        self.unexpected: list[str] = []

    def call(self, method: str, url: str, **kw) -> httpx.Response | None:  # noqa: ANN003
        try:
            response = self.http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            self.statuses[0] += 1
            self.unexpected.append(f"{method} {url}: {exc!r}")
            return None
        self.statuses[response.status_code] += 1
        if response.status_code >= 500 and response.status_code != 503:
            self.unexpected.append(f"{method} {url}: {response.status_code} {response.text}")
        if response.status_code == 503 and "Retry-After" not in response.headers:
            self.unexpected.append(f"{method} {url}: 503 without Retry-After")
        return response


def _submit(client: Client, jobs: dict[str, str], pending: dict[str, int]) -> None:
    """Submit one job (or retry a pending key); ``jobs`` maps job id -> key."""
    key = next(iter(pending), None) or secrets.token_hex(8)
    response = client.call("POST", "/jobs", json=JOB, headers={"Idempotency-Key": key})
    if response is not None and response.status_code in (200, 202):
        jobs[response.json()["id"]] = key
        pending.pop(key, None)
    else:
        pending[key] = pending.get(key, 0) + 1


def _fault(kind: str, rng: random.Random, stack: Stack, redis: RedisServer, db: str) -> None:
    if kind in ("kill_worker", "term_worker"):
        victims = alive(stack.workers)
        if victims:
            victim = rng.choice(victims)
            victim.popen.send_signal(signal.SIGKILL if kind == "kill_worker" else signal.SIGTERM)
        launch_workers(stack, 1, **ENV)
    elif kind in ("redis_restart", "redis_lost"):
        redis.kill()
        time.sleep(rng.uniform(1, 6))
        redis.start(keep_data=kind == "redis_restart")
    else:
        with cut_database(db):
            time.sleep(rng.uniform(1, 6))


def _check(stack: Stack, jobs: dict[str, str]) -> dict[str, object]:
    from sqlalchemy import func, select

    from models.checkpoint import load_model
    from service.db.engine import session_scope
    from service.db.tables import JobRecord, MetricRecord, ModelRecord

    logs = "".join(p.output() for p in stack.workers)
    done = Counter((m[1], int(m[2])) for m in EPOCH_DONE.finditer(logs))
    twice = {job for (job, _), n in done.items() if n > 1}
    lost, bad_rows, bad_artifacts = [], [], []
    statuses: Counter[str] = Counter()
    with session_scope(stack.env["DATABASE_URL"]) as s:
        for job in s.scalars(select(JobRecord)).all():
            statuses[job.status] += 1
            if job.status not in TERMINAL:
                lost.append(job.id)
            rows = s.execute(
                select(MetricRecord.epoch, MetricRecord.name, func.count())
                .where(MetricRecord.job_id == job.id)
                .group_by(MetricRecord.epoch, MetricRecord.name)
            ).all()
            if any(n != 1 for _, _, n in rows) or (
                job.status == "succeeded" and {e for e, _, _ in rows} != {1, 2}
            ):
                bad_rows.append(job.id)
            if job.status == "succeeded":
                record = s.get(ModelRecord, job.result_model_id)
                try:
                    load_model(record.path)
                except Exception as exc:  # noqa: BLE001 (any failure to load counts)
                    bad_artifacts.append(f"{job.id}: {exc}")
        submitted_unknown = set(jobs) - set(s.scalars(select(JobRecord.id)).all())
    return {
        "job_statuses": dict(statuses),
        "lost": len(lost) + len(submitted_unknown),
        "twice": len(twice),
        "metric_rows_bad": len(bad_rows),
        "artifact_bad": len(bad_artifacts),
        "details": {
            "lost": lost,
            "twice": sorted(twice),
            "rows": bad_rows,
            "artifacts": bad_artifacts,
        },  # fmt: skip
    }


def soak(
    minutes: float, seed: int, workers: int, backlog: int, logs: Path | None = None
) -> dict[str, object]:
    """Run the soak (see the module doc); returns the summary. ``logs``: a directory to
    copy the processes' logs into at the end (for a failed invariant)."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        root = Path(tmp)
        redis = RedisServer(root / "redis").start()
        backend = postgres_redis_backend(root, mnist_dir())
        backend.env.update(BROKER_URL=redis.url, **ENV)
        stack = Stack(backend, root)
        db = database_name(backend.env["DATABASE_URL"])
        try:
            stack.migrate()
            stack.start_api()
            wait_ready(launch_workers(stack, workers, **ENV))
            client = Client(stack)
            jobs: dict[str, str] = {}
            pending: dict[str, int] = {}
            faults: Counter[str] = Counter()
            pixels = [[(i * 7 + j * 3) % 256 for j in range(28)] for i in range(28)]
            model_id = None
            end = time.monotonic() + minutes * 60
            stop = threading.Event()

            def inject() -> None:  # faults in their own thread: the client goes on meanwhile
                while not stop.wait(rng.uniform(8, 25)):
                    kind = rng.choice(FAULTS)
                    faults[kind] += 1
                    _fault(kind, rng, stack, redis, db)

            injector = threading.Thread(target=inject, name="faults", daemon=True)
            injector.start()
            while time.monotonic() < end:
                page = client.call("GET", "/jobs", params={"limit": 200})
                if page is not None and page.status_code == 200:
                    items = page.json()["items"]
                    unfinished = sum(1 for j in items if j["status"] not in TERMINAL)
                    if unfinished < backlog:
                        _submit(client, jobs, pending)
                    model_id = model_id or next(
                        (j["result"]["model_id"] for j in items
                         if j["status"] == "succeeded" and j.get("result")), None,
                    )  # fmt: skip
                if model_id:
                    client.call("POST", "/predict", json={"pixels": pixels, "model_id": model_id})
                time.sleep(0.2)
            stop.set()
            injector.join(60)
            while pending:  # the keys a 503 left: the same request again gets the one job
                _submit(client, jobs, pending)
                time.sleep(0.5)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                page = client.call("GET", "/jobs", params={"limit": 200})
                if page is not None and page.status_code == 200:
                    if all(j["status"] in TERMINAL for j in page.json()["items"]):
                        break
                time.sleep(1)
            summary = {
                "minutes": minutes,
                "seed": seed,
                "jobs": len(jobs),
                "faults": dict(faults),
                "faults_total": sum(faults.values()),
                "http": {str(k): v for k, v in sorted(client.statuses.items())},
                "unexpected_5xx": len(client.unexpected),
                "unexpected": client.unexpected[:10],
                **_check(stack, jobs),
            }
            client.http.close()
            return summary
        finally:
            stack.stop()
            backend.cleanup()
            redis.stop()
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                for log in root.glob("*.log"):
                    shutil.copy(log, logs / log.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backlog", type=int, default=4, help="unfinished jobs kept")
    parser.add_argument("--logs", type=Path, default=None, help="copy process logs here")
    args = parser.parse_args()
    summary = soak(args.minutes, args.seed, args.workers, args.backlog, args.logs)
    print(json.dumps(summary))
    bad = ("lost", "twice", "metric_rows_bad", "artifact_bad", "unexpected_5xx")
    return 1 if any(summary[k] for k in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
