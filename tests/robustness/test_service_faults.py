"""Faults around the service, against real servers the tests start and cut themselves: a
private ``redis-server`` (killed, back with or without its data), a private database on the
machine's Postgres (connections refused and terminated), and SIGTERM to a training worker.
Real ``lora-service api`` / ``worker`` processes, real MNIST (tests/e2e/e2e_stack.py).

Timing here: heartbeat 0.5 s, lease 4 s (a worker fences itself after 3 s without a
renewal), reaper every 0.5 s, ``QUEUED_RESEND_SECONDS`` 3 s.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from e2e_stack import Stack, mnist_dir, postgres_redis_backend, services_reachable, submit, watch
from fault_servers import RedisServer, cut_database, database_name
from robust_helpers import (
    SLOW_EPOCHS,
    SMALL_NET,
    TALLY,
    alive,
    ensure_workers,
    epochs_done,
    job_row,
    metric_rows,
    running_on,
    wait_for,
)
from svc_helpers import error_of

pytestmark = pytest.mark.e2e

FAULT_ENV = {
    "HEARTBEAT_SECONDS": "0.5", "LEASE_SECONDS": "4", "REAPER_SECONDS": "0.5",
    "QUEUED_RESEND_SECONDS": "3",
}  # fmt: skip
FENCE_SECONDS = 3.0  # LEASE_SECONDS - 2 x HEARTBEAT_SECONDS
QUICK = {"kind": "pretrain", "config": {"epochs": 1, "max_train_samples": 500, **SMALL_NET}}


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, RedisServer]]:
    """A fresh Postgres database, a private Redis, the API running, no worker yet."""
    if not services_reachable():
        pytest.skip("Postgres is not running on 127.0.0.1")
    root = tmp_path_factory.mktemp("faults")
    redis = RedisServer(root / "redis").start()
    backend = postgres_redis_backend(root, mnist_dir())
    backend.env.update(BROKER_URL=redis.url, **FAULT_ENV)
    stack = Stack(backend, root)
    try:
        stack.migrate()
        stack.start_api()
        yield stack, redis
    finally:
        stack.stop()
        backend.cleanup()
        redis.stop()


def _workers(stack: Stack, count: int) -> list:
    return ensure_workers(stack, count, **FAULT_ENV)


def _final(stack: Stack, job_id: str, timeout: float = 120) -> dict:
    with stack.client() as http:
        final, _ = watch(http, job_id, timeout=timeout)
    TALLY.check(stack.workers, job_id, final["status"])
    return final


def _epochs_once(stack: Stack, job_id: str, epochs: int) -> None:
    done = epochs_done(stack.workers, job_id)
    trained = sorted(e for run in done.values() for e in run)
    assert trained == list(range(1, epochs + 1)), (done, stack.logs())
    names = {n for _, n, _ in metric_rows(stack, job_id)}
    rows = [(e, n) for e, n, _ in metric_rows(stack, job_id)]
    assert sorted(rows) == sorted((e, n) for e in range(1, epochs + 1) for n in names)


def _assert_503(response: httpx.Response, code: str) -> None:
    error_of(response, 503, code)
    assert int(response.headers["Retry-After"]) > 0


def test_redis_restarts_with_and_without_its_data(fault_stack) -> None:  # noqa: ANN001
    """A running job finishes across two Redis crashes; a job waiting in Redis survives the
    restart with data and is sent again after the one without; a job submitted while Redis
    is down is answered 202 and runs once it is back; the worker reconnects by itself."""
    stack, redis = fault_stack
    (worker,) = _workers(stack, 1)
    with stack.client() as http:
        slow = {"kind": "pretrain", "config": {"epochs": 3, **SLOW_EPOCHS}}
        running = submit(http, slow)["id"]
        running_on(stack, running, attempt=1)
        waiting = submit(http, QUICK)["id"]  # one worker, busy: its message waits in Redis

        redis.kill()
        _assert_503(http.get("/health"), "unhealthy")
        time.sleep(2)
        redis.start(keep_data=True)
        wait_for(lambda: http.get("/health").status_code == 200, 30, "health back")

        redis.kill()  # and now lose everything Redis held
        during = http.post("/jobs", json=QUICK)
        assert during.status_code == 202, during.text  # committed; sent once Redis is back
        late = during.json()["id"]
        assert job_row(stack, late).status == "queued"
        time.sleep(2)
        redis.start(keep_data=False)

    for job_id in (running, waiting, late):
        final = _final(stack, job_id)
        assert final["status"] == "succeeded", (final, stack.logs())
        assert final["attempt"] == 1
    assert alive([worker]) == [worker]  # the same process, reconnected by itself
    _epochs_once(stack, running, 3)
    resent = [line for line in worker.output().splitlines() if "re-sent [" in line]
    assert any(late in line.split("re-sent", 1)[1] for line in resent), resent  # the reaper


def test_database_cut_short_keeps_the_job_long_fences_it(fault_stack) -> None:  # noqa: ANN001
    """While the database refuses connections the API answers 503 with Retry-After (never
    500) and recovers without a restart; a worker cut off for less than its fence keeps its
    job, one cut off for longer stops, and the job resumes from its checkpoint once."""
    stack, _ = fault_stack
    _workers(stack, 1)
    db = database_name(stack.env["DATABASE_URL"])
    epochs = 4
    with stack.client() as http:
        job_id = submit(http, {"kind": "pretrain", "config": {"epochs": epochs, **SLOW_EPOCHS}})[
            "id"
        ]
        running_on(stack, job_id, attempt=1)
        wait_for(lambda: job_row(stack, job_id).epoch >= 1, 120, "epoch 1 recorded")
        with cut_database(db):
            _assert_503(http.get(f"/jobs/{job_id}"), "database_unavailable")
            _assert_503(http.post("/jobs", json=QUICK), "database_unavailable")
            _assert_503(http.get("/health"), "unhealthy")
            time.sleep(FENCE_SECONDS / 3)  # shorter than the fence
        assert http.get(f"/jobs/{job_id}").status_code == 200  # recovered, no restart
        row = job_row(stack, job_id)
        assert row.attempt == 1, (row.status, row.error_message, stack.logs())

        wait_for(lambda: job_row(stack, job_id).epoch >= 2, 120, "epoch 2 recorded")
        if job_row(stack, job_id).status == "running":
            with cut_database(db):
                time.sleep(FENCE_SECONDS + 1.5)  # longer than the fence: the worker stops
            final = _final(stack, job_id)
            assert final["attempt"] == 2, (final, stack.logs())
            stopped = (
                f"job {job_id}: lease expired locally; stopping",
                f"job {job_id}: database unreachable past the lease fence; stopping",
            )
            assert any(m in p.output() for p in stack.workers for m in stopped), stack.logs()
        else:
            final = _final(stack, job_id)
    assert final["status"] == "succeeded", (final, stack.logs())
    _epochs_once(stack, job_id, epochs)


def test_sigterm_hands_the_job_back_at_once(fault_stack) -> None:  # noqa: ANN001
    """SIGTERM to the worker training a job: it stops at the next step, the job is
    ``queued`` again (a ``requeued`` event saying why) well before its lease would go
    stale, the worker exits, and another worker resumes from the last epoch's checkpoint."""
    stack, _ = fault_stack
    _workers(stack, 2)
    epochs = 4
    with stack.client() as http:
        job_id = submit(http, {"kind": "pretrain", "config": {"epochs": epochs, **SLOW_EPOCHS}})[
            "id"
        ]
    _, victim = running_on(stack, job_id, attempt=1)
    wait_for(lambda: job_row(stack, job_id).epoch >= 1, 120, "epoch 1 recorded")
    victim.popen.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    wait_for(lambda: f"job {job_id}: worker shutting down; handed back" in victim.output(), 30,
             f"the hand-back\n{stack.logs()}")  # fmt: skip
    row = job_row(stack, job_id)
    assert row.status == "queued" or row.attempt == 2, row.status
    assert time.monotonic() - sent < 4, "not handed back before the lease (4 s) could expire"
    victim.popen.wait(30)  # the worker then exits
    final = _final(stack, job_id)
    assert final["status"] == "succeeded" and final["attempt"] == 2, (final, stack.logs())
    done = epochs_done(stack.workers, job_id)
    assert len(done) == 2 and done[victim.name][0] == 1, done
    _epochs_once(stack, job_id, epochs)
    with stack.client() as http:
        events = http.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    requeued = [e for e in events if e["data"].get("status") == "requeued"]
    assert len(requeued) == 1 and "SIGTERM" in requeued[0]["data"]["reason"], requeued
