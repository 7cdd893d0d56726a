"""Webhooks: signed Standard Webhooks messages on a job's terminal status, sent by the API
processes from the database outbox, retried with backoff, never lost when a worker dies.

A real receiver (``webhook_receiver.Receiver``: an http.server thread on 127.0.0.1) checks
every signature with ``standardwebhooks.Webhook(secret).verify``, as a user's would. The
outbox and the dispatcher run on SQLite and Postgres; the whole path runs against a real
``lora-service api`` and ``lora-service worker`` (embedded stack).
"""

from __future__ import annotations

import base64
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from svc_helpers import add_model, error_of
from webhook_receiver import Receiver, verified

from service.core.settings import Settings
from service.db import job_records, webhook_records
from service.db.engine import session_factory, session_scope
from service.db.retry import retry_locked
from service.db.tables import JobEventRecord, WebhookDeliveryRecord, as_utc, utcnow
from service.jobs import state as job_state
from service.jobs.webhook_dispatcher import WebhookDispatcher
from service.jobs.webhooks import pin, send, signed_headers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_stack import (  # noqa: E402
    SMALL_NET,
    Stack,
    embedded_backend,
    free_port,
    mnist_dir,
    submit,
    watch,
)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
TINY = {"epochs": 1, "max_train_samples": 256, **SMALL_NET}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _outbox_settings(url: str, **values: Any) -> Settings:
    """Settings for an in-test dispatcher on ``url``: short timeout, backoff and poll."""
    base = {
        "database_url": url,
        "webhook_secret": SECRET,
        "webhook_allow_private": True,
        "webhook_backoff_seconds": 0.05,
        "webhook_retry_seconds": 30.0,
        "webhook_timeout_seconds": 0.5,
        "webhook_poll_seconds": 0.05,
    }
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[arg-type]


def _cancelled_job(url: str, webhook_url: str) -> tuple[str, str]:
    """A queued job with ``webhook_url``, cancelled (the real outbox write of its terminal
    status); returns (job id, webhook message id)."""
    with session_scope(url) as session:
        job = job_records.create_job(
            session, kind="pretrain", config={}, base_model_id=None, epochs=1,
            webhook_url=webhook_url,
        )  # fmt: skip
        session.commit()
        assert job_state.request_cancel(session, job.id).status == "cancelled"
        (delivery,) = webhook_records.job_deliveries(session, job.id)
        return job.id, delivery.id


def _deliveries(url: str, job_id: str) -> list[WebhookDeliveryRecord]:
    with session_scope(url) as session:
        return webhook_records.job_deliveries(session, job_id)


def _settled(url: str, job_id: str) -> WebhookDeliveryRecord | None:
    (row,) = _deliveries(url, job_id)
    return row if row.status != "pending" else None


# ----------------------------------------------------------------- signing (sanity)


def test_signature_verifies_and_tampering_fails() -> None:
    body = '{"type":"job.succeeded","data":{"job_id":"job_1"}}'
    headers = signed_headers(Webhook(SECRET), "msg_1", body, utcnow())
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == {
        "type": "job.succeeded",
        "data": {"job_id": "job_1"},
    }
    other_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    tampered = [
        (body.replace("job_1", "job_2"), headers, SECRET),
        (body, {**headers, "webhook-id": "msg_2"}, SECRET),
        (body, {**headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()},
         SECRET),
        (body, headers, other_secret),
    ]  # fmt: skip
    for data, hdrs, secret in tampered:
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(data, hdrs)


def test_pin_keeps_host_and_tls_name(receiver: Receiver) -> None:
    url, headers, ext = pin("https://hooks.example.com:8443/in?token=a", "203.0.113.7")
    assert url == "https://203.0.113.7:8443/in?token=a"
    assert headers == {"host": "hooks.example.com:8443"}
    assert ext == {"sni_hostname": "hooks.example.com"}
    assert pin("http://[::1]/x", "::1")[:2] == ("http://[::1]/x", {"host": "[::1]"})
    # a pinned request really reaches the address, with the URL's host name
    url, headers, ext = pin(receiver.url("/pinned").replace("127.0.0.1", "localhost"), "127.0.0.1")
    assert ext == {} and url == receiver.url("/pinned")
    assert httpx.post(url, headers=headers, content=b"{}").status_code == 200
    (got,) = receiver.received("/pinned")
    assert got.headers["host"] == f"localhost:{receiver.server.server_port}"  # fmt: skip


def test_private_address_is_refused_at_send_time(receiver: Receiver, db_url: str) -> None:
    job_id, _ = _cancelled_job(db_url, receiver.url("/private"))
    (delivery,) = _deliveries(db_url, job_id)
    with httpx.Client() as client:
        outcome = send(client, Webhook(SECRET), delivery, allow_private=False)
        assert not outcome.delivered and outcome.give_up and "127.0.0.1" in outcome.error
        delivery.url = "http://nonexistent.invalid/hook"  # DNS failure: try again later
        outcome = send(client, Webhook(SECRET), delivery, allow_private=False)
        assert not outcome.delivered and not outcome.give_up, outcome
    assert receiver.received() == []
    with session_scope(db_url) as s:  # settle it: later dispatchers on this database skip it
        webhook_records.record_failure(
            s, delivery, error="test", now=utcnow(), first_backoff_seconds=1, retry_seconds=1,
            give_up=True,
        )  # fmt: skip


# ------------------------------------------------------------------ the outbox records


def test_backoff_doubles_up_to_five_minutes() -> None:
    delays = [webhook_records.backoff_seconds(n, 1.0) for n in range(1, 13)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert webhook_records.backoff_seconds(10_000, 1.0) == 300
    with pytest.raises(ValueError):
        webhook_records.backoff_seconds(0, 1.0)


def test_claim_retry_give_up_and_fencing(db_url: str) -> None:
    job_id, delivery_id = _cancelled_job(db_url, "http://127.0.0.1:9/hook")
    with session_scope(db_url) as s:
        t0 = as_utc(webhook_records.job_deliveries(s, job_id)[0].created_at)
    at = lambda seconds: t0 + timedelta(seconds=seconds)  # noqa: E731
    claim = lambda s, now: [  # noqa: E731 (only this test's row: the database is shared)
        d for d in webhook_records.claim_due(s, now=now, lock_seconds=5, limit=100)
        if d.id == delivery_id
    ]  # fmt: skip
    with session_scope(db_url) as s:
        (first,) = claim(s, at(0.1))
        assert first.attempts == 0 and first.status == "pending"
    with session_scope(db_url) as s:
        assert claim(s, at(1)) == []  # locked by the first claim
        (again,) = claim(s, at(5.2))  # the first sender died: its lock expired
    with session_scope(db_url) as s:
        assert webhook_records.record_failure(
            s, again, error="HTTP 500", now=at(6), first_backoff_seconds=1, retry_seconds=10
        ) == "pending"  # fmt: skip
        # the first sender comes back and reports: fenced off (an attempt was recorded since)
        assert webhook_records.mark_delivered(s, first, now=at(6.1)) is False
    (row,) = _deliveries(db_url, job_id)
    assert (row.status, row.attempts, row.last_error, row.locked_until) == (
        "pending", 1, "HTTP 500", None,
    )  # fmt: skip
    with session_scope(db_url) as s:
        assert claim(s, at(6.5)) == []  # due at 6 + 1 s
        (third,) = claim(s, at(7))
        status = webhook_records.record_failure(
            s, third, error="HTTP 503", now=at(9.5), first_backoff_seconds=1, retry_seconds=10
        )
        assert status == "pending"  # backoff 2 s would pass the window: the last try is at 10 s
    (row,) = _deliveries(db_url, job_id)
    assert as_utc(row.next_attempt_at) == at(10) and row.attempts == 2
    with session_scope(db_url) as s:
        (fourth,) = claim(s, at(10))
        assert webhook_records.record_failure(
            s, fourth, error="timeout", now=at(10.2), first_backoff_seconds=1, retry_seconds=10
        ) == "failed"  # fmt: skip
        assert claim(s, at(100)) == []
    (row,) = _deliveries(db_url, job_id)
    assert (row.status, row.attempts, row.last_error) == ("failed", 3, "timeout")


def test_racing_claims_take_a_message_once(db_url: str) -> None:
    """A second sender that saw the message unclaimed while the first one's claim was not
    yet committed gets nothing once it is (its UPDATE re-checks the conditions)."""
    job_id, delivery_id = _cancelled_job(db_url, "http://127.0.0.1:9/hook")
    factory, now, found = session_factory(db_url), utcnow() + timedelta(seconds=1), {}
    first = factory()
    claimed = webhook_records.claim_due(first, now=now, lock_seconds=60, limit=100)
    assert delivery_id in {d.id for d in claimed}  # not committed yet

    def second_sender() -> None:
        with factory() as other:

            def claim() -> list[WebhookDeliveryRecord]:
                got = webhook_records.claim_due(other, now=now, lock_seconds=60, limit=100)
                other.commit()
                return got

            found["claimed"] = {d.id for d in retry_locked(other, claim)}

    thread = threading.Thread(target=second_sender)
    thread.start()
    time.sleep(0.5)  # the second sender is now waiting for the first one's row
    first.commit()
    first.close()
    thread.join(40)
    assert found["claimed"] is not None and delivery_id not in found["claimed"], found
    (row,) = _deliveries(db_url, job_id)
    with session_scope(db_url) as s:  # settle it
        webhook_records.record_failure(
            s, row, error="test", now=now, first_backoff_seconds=1, retry_seconds=1, give_up=True
        )


def test_two_dispatchers_send_each_message_once(receiver: Receiver, db_url: str) -> None:
    jobs = dict(_cancelled_job(db_url, receiver.url("/many")) for _ in range(12))
    dispatchers = [WebhookDispatcher(_outbox_settings(db_url)) for _ in range(2)]
    try:
        assert all(d.start() for d in dispatchers)
        receiver.wait(lambda: len(receiver.received("/many")) >= 12, 30, "12 messages")
        for job_id in jobs:
            receiver.wait(lambda: _settled(db_url, job_id), 10, f"{job_id} delivered")  # noqa: B023
        time.sleep(0.3)  # a duplicate would arrive now
    finally:
        for d in dispatchers:
            d.stop()
    got = receiver.received("/many")
    assert Counter(r.webhook_id for r in got) == Counter(jobs.values())  # each exactly once
    for request in got:
        payload = verified(SECRET, request)
        assert payload["type"] == "job.cancelled"
        assert jobs[payload["data"]["job_id"]] == request.webhook_id
    for job_id in jobs:
        (row,) = _deliveries(db_url, job_id)
        assert (row.status, row.attempts) == ("delivered", 1) and row.delivered_at


def test_answers_decide_retry_or_give_up(receiver: Receiver, db_url: str) -> None:
    receiver.answer("/flaky", 500, 502)  # then 200
    receiver.answer("/busy", 429, 404)  # 4xx are retried too (then 200)
    receiver.delay("/slow", 1.5)  # first answer after the 0.5 s timeout, then at once
    receiver.default["/gone"] = 410
    closed = f"http://127.0.0.1:{free_port()}/closed"  # nothing listens: connection refused
    jobs = {
        path: _cancelled_job(db_url, receiver.url(path) if path != "/closed" else closed)[0]
        for path in ("/flaky", "/busy", "/slow", "/gone", "/closed")
    }
    dispatcher = WebhookDispatcher(_outbox_settings(db_url, webhook_retry_seconds=3.0))
    try:
        assert dispatcher.start()
        rows = {
            path: receiver.wait(lambda: _settled(db_url, job_id), 20, path)  # noqa: B023
            for path, job_id in jobs.items()
        }
    finally:
        dispatcher.stop()
    summary = {path: (r.status, r.attempts, r.last_error) for path, r in rows.items()}
    assert summary["/flaky"] == ("delivered", 3, "HTTP 502"), summary
    assert summary["/busy"] == ("delivered", 3, "HTTP 404"), summary
    assert summary["/slow"] == ("delivered", 2, "no answer within 0.5 s"), summary
    assert summary["/gone"] == ("failed", 1, "HTTP 410"), summary
    status, attempts, error = summary["/closed"]  # retried until the 3 s window ended
    assert status == "failed" and attempts >= 4 and "ConnectError" in error, summary
    ids = {path: {r.webhook_id for r in receiver.received(path)} for path in jobs}
    assert all(len(found) == 1 for path, found in ids.items() if path != "/closed"), ids
    for request in receiver.received():
        verified(SECRET, request)  # every attempt signed afresh, all valid


# ------------------------------------------------------------- POST /jobs webhook_url


@pytest.fixture
def hook_app(migrated):  # noqa: ANN001, ANN201
    """An in-process app with a secret; private addresses refused unless a test allows."""
    from service.api.app import create_app

    def make(**values: Any):  # noqa: ANN202
        update = {"webhook_secret": SecretStr(SECRET), "webhook_allow_private": False, **values}
        return create_app(migrated.model_copy(update=update))

    return make


def test_bad_webhook_urls_are_refused(hook_app, receiver: Receiver) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    def post(client: TestClient, url: str | None) -> httpx.Response:
        body: dict[str, Any] = {"kind": "pretrain", "config": {"epochs": 1}}
        if url is not None:
            body["webhook_url"] = url
        return client.post("/jobs", json=body)

    with TestClient(hook_app()) as client:
        for url in (
            "ftp://hooks.example.com/in",
            "hooks.example.com/in",
            "http://user:pw@hooks.example.com/in",
            "http://hooks.example.com:99999/in",
            receiver.url("/hook"),  # loopback, not allowed by the settings
            "http://localhost:8000/hook",
            "http://10.1.2.3/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://nonexistent.invalid/hook",
        ):
            error = error_of(post(client, url), 422, "invalid_webhook_url", "webhook_url")
            assert "webhook_url" in error["message"], error
        error_of(post(client, ""), 422, "validation_error")
        assert client.get("/jobs").json()["total"] == 0  # nothing was created
    with TestClient(hook_app(webhook_secret=None, webhook_allow_private=True)) as client:
        error = error_of(post(client, receiver.url("/hook")), 422, "invalid_webhook_url")
        assert "WEBHOOK_SECRET" in error["message"] and error["param"] == "webhook_url"
    with TestClient(hook_app(webhook_allow_private=True, webhook_url=receiver.url("/d"))) as c:
        named = post(c, receiver.url("/named")).json()
        default = post(c, None).json()
        assert named["webhook_url"] == receiver.url("/named")
        assert default["webhook_url"] == receiver.url("/d")  # the WEBHOOK_URL setting
        assert c.get(f"/jobs/{named['id']}/webhooks").json() == {"items": []}
        error_of(c.get("/jobs/job_nope/webhooks"), 404, "job_not_found")
        # cancelled while queued: the app's own dispatcher sends job.cancelled
        c.post(f"/jobs/{named['id']}/cancel")
        receiver.wait(lambda: receiver.received("/named"), 10, "job.cancelled")
        (item,) = receiver.wait(
            lambda: [i for i in c.get(f"/jobs/{named['id']}/webhooks").json()["items"]
                     if i["status"] == "delivered"], 10, "delivered",
        )  # fmt: skip
    (request,) = receiver.received("/named")
    assert verified(SECRET, request)["type"] == "job.cancelled" == item["type"]
    assert item["id"] == request.webhook_id and item["attempts"] == 1
    assert item["payload"]["data"]["job_id"] == named["id"] and item["next_attempt_at"] is None


# -------------------------------------------- the whole path: API and worker processes

WEBHOOK_ENV = {
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_BACKOFF_SECONDS": "0.2",
    "WEBHOOK_RETRY_SECONDS": "120",
    "WEBHOOK_POLL_SECONDS": "0.1",
    "HEARTBEAT_SECONDS": "0.5",
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Receiver]]:
    """``lora-service api`` + one ``lora-service worker`` (embedded) sending webhooks to a
    receiver on 127.0.0.1."""
    root = tmp_path_factory.mktemp("webhooks")
    backend = embedded_backend(root, mnist_dir())
    backend.env.update(WEBHOOK_ENV)
    stack = Stack(backend, root)
    with Receiver() as receiver:
        try:
            stack.migrate()
            stack.start_api()
            stack.start_worker()
            yield stack, receiver
        finally:
            stack.stop()


def _hook(http: httpx.Client, body: dict[str, Any], url: str) -> dict[str, Any]:
    return submit(http, {**body, "webhook_url": url})


def _status_event(stack: Stack, job_id: str, seq: int) -> JobEventRecord:
    from sqlalchemy import select

    with session_scope(stack.env["DATABASE_URL"]) as s:
        return s.scalars(
            select(JobEventRecord).where(JobEventRecord.job_id == job_id, JobEventRecord.seq == seq)
        ).one()


def _check_message(stack: Stack, request: Any, job: dict[str, Any], status: str) -> dict:
    """The request is a verified ``job.<status>`` for ``job``, pointing at its status event."""
    payload = verified(SECRET, request)
    assert payload["type"] == f"job.{status}" and set(payload) == {"type", "timestamp", "data"}
    data = payload["data"]
    assert (data["job_id"], data["status"], data["kind"]) == (job["id"], status, job["kind"])
    event = _status_event(stack, job["id"], data["event_id"])
    assert event.fact == f"status:{status}" and event.data["status"] == status
    return data


@pytest.mark.e2e
def test_succeeded_job_sends_one_verified_message(live: tuple[Stack, Receiver]) -> None:
    stack, receiver = live
    with stack.client() as http:
        job = _hook(http, {"kind": "pretrain", "config": TINY}, receiver.url("/ok"))
        final, _ = watch(http, job["id"], timeout=120)
        assert final["status"] == "succeeded", final
        (request,) = receiver.wait(lambda: receiver.received("/ok"), 15, "job.succeeded")
        data = _check_message(stack, request, job, "succeeded")
        assert data["result_model_id"] == final["result"]["model_id"] and data["error"] is None
        assert data["test_accuracy"] == final["result"]["test_accuracy"]
        (item,) = http.get(f"/jobs/{job['id']}/webhooks").json()["items"]
        assert item["id"] == request.webhook_id
        assert (item["status"], item["attempts"]) == ("delivered", 1)
    time.sleep(0.5)  # several polling rounds: no second copy arrives
    assert len(receiver.received("/ok")) == 1


@pytest.mark.e2e
def test_failed_and_cancelled_jobs_send_their_status(live: tuple[Stack, Receiver]) -> None:
    stack, receiver = live
    base = add_model(stack.env["DATABASE_URL"])  # registered, but its files do not exist
    with stack.client() as http:
        failing = _hook(
            http,
            {"kind": "finetune_lora", "base_model_id": base, "config": {"epochs": 1}},
            receiver.url("/failed"),
        )
        final, _ = watch(http, failing["id"], timeout=60)
        assert final["status"] == "failed", final
        (request,) = receiver.wait(lambda: receiver.received("/failed"), 15, "job.failed")
        data = _check_message(stack, request, failing, "failed")
        assert data["error"] == {k: final["error"][k] for k in ("code", "message")}

        # one job cancelled while it runs (by the worker), one while queued (by the API)
        running = _hook(http, {"kind": "pretrain", "config": {**TINY, "epochs": 200}},
                        receiver.url("/cancelled"))  # fmt: skip
        watch(http, running["id"], until={"running"}, timeout=60)
        queued = _hook(http, {"kind": "pretrain", "config": TINY}, receiver.url("/cancelled"))
        assert http.post(f"/jobs/{queued['id']}/cancel").status_code == 200
        assert http.post(f"/jobs/{running['id']}/cancel").status_code == 202
        for job in (queued, running):
            assert watch(http, job["id"], timeout=60)[0]["status"] == "cancelled"
        got = receiver.wait(lambda: len(receiver.received("/cancelled")) >= 2 and
                            receiver.received("/cancelled"), 15, "two job.cancelled")  # fmt: skip
        by_job = {verified(SECRET, r)["data"]["job_id"]: r for r in got}
        assert set(by_job) == {queued["id"], running["id"]} and len(got) == 2
        for job in (queued, running):
            _check_message(stack, by_job[job["id"]], job, "cancelled")


@pytest.mark.e2e
def test_retried_and_delivered_after_the_worker_is_killed(live: tuple[Stack, Receiver]) -> None:
    """The receiver answers 500 until it "recovers"; the worker that finished the job is
    SIGKILLed as soon as the job reads succeeded: the API still delivers the message."""
    stack, receiver = live
    receiver.default["/recovering"] = 500
    with stack.client() as http:
        job = _hook(http, {"kind": "pretrain", "config": TINY}, receiver.url("/recovering"))
        final, _ = watch(http, job["id"], timeout=120)
        assert final["status"] == "succeeded", final
        (worker,) = [p for p in stack.workers if p.popen.poll() is None]
        worker.popen.kill()  # SIGKILL: no clean-up of any kind
        worker.popen.wait(10)
        failures = receiver.wait(
            lambda: len(receiver.received("/recovering")) >= 2 and receiver.received("/recovering"),
            15, "two failed attempts",
        )  # fmt: skip
        assert {r.status for r in failures} == {500}
        (row,) = _deliveries(stack.env["DATABASE_URL"], job["id"])
        assert row.status == "pending" and row.last_error == "HTTP 500"
        receiver.default["/recovering"] = 200  # the receiver recovers
        receiver.wait(
            lambda: any(r.status == 200 for r in receiver.received("/recovering")), 15, "delivery"
        )
        item = receiver.wait(
            lambda: [i for i in http.get(f"/jobs/{job['id']}/webhooks").json()["items"]
                     if i["status"] == "delivered"], 10, "delivered recorded",
        )[0]  # fmt: skip
    got = receiver.received("/recovering")
    assert worker.popen.returncode == -9
    assert {r.webhook_id for r in got} == {item["id"]}  # every retry is the same message
    assert [r.status for r in got].count(200) == 1 and got[-1].status == 200
    assert item["attempts"] == len(got) >= 3 and item["last_error"] == "HTTP 500"
    for request in got:
        _check_message(stack, request, job, "succeeded")
