"""The embedded configuration (SQLite database + SQLite broker) under load and under kills:
real ``lora-service api`` and ``lora-service worker`` processes.

* The API and two workers write to one SQLite file at once (submissions with and without
  Idempotency-Key, cancels, heartbeats every 0.2 s, per-epoch metrics, registrations,
  reaper passes) for ``LOAD_SECONDS``: no request answers 5xx or "database is locked".
* A job whose every worker is SIGKILLed ends ``failed`` at the attempt limit. The SQLite
  broker never redelivers a message taken by a killed worker, so each attempt after the
  first comes from a reaper's new message; once the job has failed nothing more is sent.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx
import pytest
from e2e_stack import Stack, submit, watch
from robust_helpers import (
    SLOW_EPOCHS,
    TALLY,
    alive,
    ensure_workers,
    job_row,
    kill,
    metric_rows,
    received,
    running_on,
)

from service.jobs.leases import WORKER_LOST

pytestmark = pytest.mark.e2e

LOAD_SECONDS = 30.0
CLIENTS = 4
TINY = {"epochs": 3, "max_train_samples": 300, "batch_size": 32, "hidden1": 16, "hidden2": 16}
EXPECTED = {
    "submit": {202},
    "replay": {200},
    "reuse": {409},
    "read": {200},
    "metrics": {200},
    "list": {200},
    "cancel": {200, 202, 409},
}


class Load:
    """Clients hammering the API; every answer outside :data:`EXPECTED` is recorded."""

    def __init__(self, stack: Stack, seconds: float) -> None:
        self.stack, self.deadline = stack, time.monotonic() + seconds
        self.job_ids: list[str] = []
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def _check(self, what: str, resp: httpx.Response) -> dict[str, Any]:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1
            if resp.status_code not in EXPECTED[what] or "locked" in resp.text:
                self.errors.append(f"{what}: {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def client(self, n: int) -> None:
        rng = random.Random(n)
        with self.stack.client() as http:
            i = 0
            while time.monotonic() < self.deadline:
                i += 1
                key = f"load-{n}-{i}"
                body = {"kind": "pretrain", "config": {**TINY, "seed": n * 1000 + i}}
                job = self._check(
                    "submit", http.post("/jobs", json=body, headers={"Idempotency-Key": key})
                )
                job_id = job["id"]
                with self.lock:
                    self.job_ids.append(job_id)
                again = http.post("/jobs", json=body, headers={"Idempotency-Key": key})
                assert self._check("replay", again).get("id") == job_id
                if i % 3 == 0:
                    other = {"kind": "pretrain", "config": {**TINY, "seed": 7}}
                    err = self._check(
                        "reuse", http.post("/jobs", json=other, headers={"Idempotency-Key": key})
                    )
                    assert err["error"]["code"] == "idempotency_key_reused"
                for _ in range(3):
                    self._check("read", http.get(f"/jobs/{job_id}"))
                    self._check("metrics", http.get(f"/jobs/{job_id}/metrics"))
                    self._check("list", http.get("/jobs", params={"limit": 20}))
                    time.sleep(rng.uniform(0.1, 0.4))
                if i % 4 == 0:
                    self._check("cancel", http.post(f"/jobs/{job_id}/cancel"))

    def run(self) -> None:
        threads = [threading.Thread(target=self.client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_api_and_two_workers_share_sqlite_without_client_errors(embedded_stack: Stack) -> None:
    stack = embedded_stack
    workers = ensure_workers(stack, 2, HEARTBEAT_SECONDS="0.2", REAPER_SECONDS="0.3")
    load = Load(stack, LOAD_SECONDS)
    load.run()
    assert not load.errors, load.errors[:10]
    assert load.counts["submit"] >= 8 and load.counts["reuse"] >= 2, load.counts

    with stack.client() as http:  # drain: cancel what still waits, let the rest finish
        for job_id in load.job_ids:
            if job_row(stack, job_id).status == "queued":
                assert http.post(f"/jobs/{job_id}/cancel").status_code in (200, 202, 409)
        finals = {job_id: watch(http, job_id, timeout=90)[0] for job_id in load.job_ids}
    statuses = [f["status"] for f in finals.values()]
    assert statuses.count("succeeded") >= 4, statuses
    assert "failed" not in statuses, [f["error"] for f in finals.values() if f["error"]]
    for job_id, final in finals.items():
        TALLY.check(stack.workers, job_id, final["status"])
        if final["status"] == "succeeded":
            assert len(metric_rows(stack, job_id)) == TINY["epochs"] * 5
    assert TALLY.run_twice.isdisjoint(finals)
    for proc in [*workers, stack.api]:
        assert "database is locked" not in proc.output(), proc.output()[-3000:]


def test_killed_every_attempt_ends_failed_without_message_loop(embedded_stack: Stack) -> None:
    """MAX_ATTEMPTS=3: three runs, three SIGKILLs; a surviving worker's reaper fails the job."""
    stack = embedded_stack
    workers = ensure_workers(stack, 4)
    with stack.client() as http:
        job_id = submit(http, {"kind": "pretrain", "config": {"epochs": 50, **SLOW_EPOCHS}})["id"]
    victims = []
    for attempt in (1, 2, 3):
        _, victim = running_on(stack, job_id, attempt)
        victims.append(victim.name)
        kill(victim)
        TALLY.kills += 1
    with stack.client() as http:
        final, _ = watch(http, job_id, timeout=60)
    TALLY.check(stack.workers, job_id, final["status"])
    assert final["status"] == "failed" and final["attempt"] == 3, final
    assert final["error"]["code"] == WORKER_LOST
    assert "died 3 times" in final["error"]["message"]
    assert len(set(victims)) == 3

    survivors = alive(workers)
    seen = sum(received(p) for p in survivors)
    time.sleep(3)  # six reaper passes of each survivor: nothing more is sent for this job
    assert sum(received(p) for p in survivors) == seen
    assert job_row(stack, job_id).status == "failed"
    assert not (stack.root / "artifacts" / "checkpoints" / job_id).exists()
