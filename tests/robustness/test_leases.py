"""Lease transitions and reaper passes on SQLite and on a real Postgres database:
take-over of stale leases, requeue with a new message, the attempt limit, cancellation,
lost messages, and two reapers racing (only one wins)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from service.db import job_records
from service.db.engine import session_scope
from service.db.tables import JobRecord, utcnow
from service.jobs import leases
from service.jobs import state as job_state


def _job(url: str) -> str:
    with session_scope(url) as s:
        return job_records.create_job(
            s, kind="pretrain", config={"epochs": 3}, base_model_id=None, epochs=3
        ).id


def _age(url: str, job_id: str, seconds: float) -> None:
    """Move the job's heartbeat ``seconds`` into the past (a silent worker)."""
    with session_scope(url) as s:
        s.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def _row(url: str, job_id: str) -> JobRecord:
    with session_scope(url) as s:
        return job_records.get_job(s, job_id)


def _reap(url: str, sent: list[str], mine: set[str], **kw: float) -> leases.ReapResult:
    """One reaper pass; keeps only this test's jobs in ``sent`` and in the result (the
    Postgres database is shared by the session's tests)."""
    args = {"lease_seconds": 30.0, "max_attempts": 3, "resend_after": 3600.0, **kw}
    with session_scope(url) as s:
        result = leases.reap(s, send=sent.append, **args)  # type: ignore[arg-type]
    sent[:] = [j for j in sent if j in mine]
    for name in ("requeued", "failed", "cancelled", "resent", "send_errors"):
        setattr(result, name, [j for j in getattr(result, name) if j in mine])
    return result


def test_take_over_only_a_stale_lease(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job_state.claim_job(s, job_id, "w1")
        take = dict(lease_seconds=30.0, max_attempts=3)
        assert leases.take_over_stale(s, job_id, "w2", **take) is None  # alive: a no-op
    _age(db_url, job_id, 60)
    with session_scope(db_url) as s:
        job = leases.take_over_stale(s, job_id, "w2", **take)
        assert job is not None and job.worker_id == "w2" and job.attempt == 2
        assert leases.take_over_stale(s, job_id, "w3", **take) is None  # fresh again
        # the old worker changes nothing any more
        assert not job_state.renew_lease(s, job_id, "w1")
        assert not job_state.record_epoch(s, job_id, "w1", 1, {"train_loss": 1.0})
        assert not job_state.mark_failed(s, job_id, code="x", message="y", worker_id="w1")
        assert job_state.stop_reason(s, job_id, "w1") == "lease_lost"
    assert _row(db_url, job_id).status == "running"


def test_take_over_refuses_cancelled_or_exhausted_jobs(db_url: str) -> None:
    cancelled, exhausted = _job(db_url), _job(db_url)
    with session_scope(db_url) as s:
        for job_id in (cancelled, exhausted):
            job_state.claim_job(s, job_id, "w1")
        job_state.request_cancel(s, cancelled)
    for job_id in (cancelled, exhausted):
        _age(db_url, job_id, 60)
    with session_scope(db_url) as s:
        assert leases.take_over_stale(s, cancelled, "w2", lease_seconds=30, max_attempts=3) is None
        assert leases.take_over_stale(s, exhausted, "w2", lease_seconds=30, max_attempts=1) is None


def test_reaper_requeues_a_stale_job_and_sends_one_message(db_url: str) -> None:
    job_id, alive_id = _job(db_url), _job(db_url)
    with session_scope(db_url) as s:
        job_state.claim_job(s, job_id, "w1")
        job_state.claim_job(s, alive_id, "w1")
    _age(db_url, job_id, 60)
    sent: list[str] = []
    mine = {job_id, alive_id}
    result = _reap(db_url, sent, mine)
    assert result.requeued == [job_id] and sent == [job_id]
    row = _row(db_url, job_id)
    assert row.status == "queued" and row.worker_id is None and row.attempt == 1
    assert _reap(db_url, sent, mine).requeued == [] and sent == [job_id]  # nothing twice
    with session_scope(db_url) as s:
        assert job_state.claim_job(s, job_id, "w2").attempt == 2  # the next run
    assert _row(db_url, alive_id).status == "running"


def test_reaper_fails_the_job_at_the_attempt_limit(db_url: str) -> None:
    job_id = _job(db_url)
    sent: list[str] = []
    for attempt in (1, 2, 3):
        with session_scope(db_url) as s:
            assert job_state.claim_job(s, job_id, f"w{attempt}").attempt == attempt
        _age(db_url, job_id, 60)
        _reap(db_url, sent, {job_id})
    row = _row(db_url, job_id)
    assert row.status == "failed" and row.error_code == leases.WORKER_LOST
    assert "died 3 times" in row.error_message and "3 attempt" in row.error_message
    assert sent == [job_id, job_id]  # two requeues, then no more messages


def test_reaper_cancels_a_dead_job_whose_cancel_was_requested(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job_state.claim_job(s, job_id, "w1")
        job_state.request_cancel(s, job_id)
    _age(db_url, job_id, 60)
    sent: list[str] = []
    assert _reap(db_url, sent, {job_id}).cancelled == [job_id] and sent == []
    assert _row(db_url, job_id).status == "cancelled"
    with session_scope(db_url) as s:  # a late message never revives it
        assert job_state.claim_job(s, job_id, "w2") is None


def test_reaper_resends_a_lost_message_once_per_period(db_url: str) -> None:
    job_id, cancelled = _job(db_url), _job(db_url)
    with session_scope(db_url) as s:
        job_state.request_cancel(s, cancelled)
    sent: list[str] = []
    mine = {job_id, cancelled}
    assert _reap(db_url, sent, mine, resend_after=3600).resent == []
    time.sleep(0.05)
    assert _reap(db_url, sent, mine, resend_after=0.01).resent == [job_id]
    assert _reap(db_url, sent, mine, resend_after=60).resent == []  # just sent
    assert sent == [job_id]


def test_failed_send_is_retried_next_pass(db_url: str) -> None:
    job_id = _job(db_url)
    with session_scope(db_url) as s:
        job_state.claim_job(s, job_id, "w1")
    _age(db_url, job_id, 60)

    def broker_down(_: str) -> None:
        raise ConnectionError("broker unreachable")

    with session_scope(db_url) as s:
        result = leases.reap(
            s, lease_seconds=30, max_attempts=3, resend_after=3600, send=broker_down
        )
    assert job_id in result.requeued and result.send_errors.count(job_id) == 1
    sent: list[str] = []
    assert _reap(db_url, sent, {job_id}).resent == [job_id] and sent == [job_id]


@pytest.mark.parametrize("reapers", [4])
def test_racing_reapers_requeue_once(db_url: str, reapers: int) -> None:
    job_ids = [_job(db_url) for _ in range(5)]
    with session_scope(db_url) as s:
        for job_id in job_ids:
            job_state.claim_job(s, job_id, "dead")
    for job_id in job_ids:
        _age(db_url, job_id, 60)
    sent: list[list[str]] = [[] for _ in range(reapers)]
    barrier = threading.Barrier(reapers)

    def reaper(n: int) -> None:
        barrier.wait()
        _reap(db_url, sent[n], set(job_ids))

    threads = [threading.Thread(target=reaper, args=(n,)) for n in range(reapers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for each in sent for j in each) == sorted(job_ids)  # each sent once
