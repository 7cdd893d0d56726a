"""``Idempotency-Key`` on ``POST /jobs``: a repeated request returns the job it created, a
different request under the same key is 409, and concurrent identical requests create one
job (the unique constraint refuses the others, which read the winner's row)."""

from __future__ import annotations

import threading

import pytest
from svc_helpers import error_of

from service.core.job_spec import PretrainSpec
from service.db.engine import session_factory
from service.jobs import submit

BODY = {"kind": "pretrain", "config": {"epochs": 2, "hidden1": 16, "hidden2": 16}}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Job ids the API enqueued (the broker is replaced by this list)."""
    ids: list[str] = []
    monkeypatch.setattr(
        "service.api.jobs.enqueue_job", lambda job_id, _settings: ids.append(job_id)
    )
    return ids


def test_same_key_same_body_returns_the_same_job(client, sent: list[str]) -> None:  # noqa: ANN001
    first = client.post("/jobs", json=BODY, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    # the same request, spelled differently: key order, a default written out
    same = {"config": {"hidden2": 16, "epochs": 2, "hidden1": 16, "lr": 1e-3}, "kind": "pretrain"}
    again = client.post("/jobs", json=same, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/jobs/{first.json()['id']}"
    assert sent == [first.json()["id"]]  # queued once
    other = client.post("/jobs", json=BODY, headers={"Idempotency-Key": "k-2"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    no_key = [client.post("/jobs", json=BODY).json()["id"] for _ in range(2)]
    assert len(set(no_key)) == 2  # without a key every request is a new job


def test_same_key_different_body_is_409(client, sent: list[str]) -> None:  # noqa: ANN001
    assert client.post("/jobs", json=BODY, headers={"Idempotency-Key": "k-3"}).status_code == 202
    changed = {"kind": "pretrain", "config": {"epochs": 3, "hidden1": 16, "hidden2": 16}}
    resp = client.post("/jobs", json=changed, headers={"Idempotency-Key": "k-3"})
    err = error_of(resp, 409, "idempotency_key_reused", "Idempotency-Key")
    assert "k-3" in err["message"]
    assert len(sent) == 1


@pytest.mark.parametrize("key", ["", "x" * 201, "has space", "caf\u00e9"])
def test_malformed_key_is_422(client, sent: list[str], key: str) -> None:  # noqa: ANN001
    resp = client.post("/jobs", json=BODY, headers={"Idempotency-Key": key.encode("utf-8")})
    error_of(resp, 422, "validation_error")
    assert sent == []


def test_concurrent_identical_requests_create_one_job(client, sent: list[str]) -> None:  # noqa: ANN001
    n = 8
    barrier = threading.Barrier(n)
    answers: list = [None] * n

    def post(i: int) -> None:
        barrier.wait()
        answers[i] = client.post("/jobs", json=BODY, headers={"Idempotency-Key": "race"})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {a.status_code for a in answers} <= {200, 202}
    assert [a.status_code for a in answers].count(202) == 1
    assert len({a.json()["id"] for a in answers}) == 1 and len(sent) == 1


def test_insert_race_rereads_the_winner(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both requests miss each other's row on the first look-up and insert; the loser's
    unique violation turns into a replay (on SQLite and Postgres)."""
    from service.core.settings import Settings

    settings = Settings(_env_file=None, database_url=db_url)  # type: ignore[call-arg]
    real_lookup = submit._by_key
    misses = {"left": 2}

    def racing_lookup(session, key):  # noqa: ANN001, ANN202
        if misses["left"]:
            misses["left"] -= 1
            return None  # as if the other request had not committed yet
        return real_lookup(session, key)

    monkeypatch.setattr(submit, "_by_key", racing_lookup)
    queued: list[str] = []
    factory = session_factory(db_url)
    config = PretrainSpec(epochs=2)
    results = []
    for _ in range(2):
        with factory() as session:
            results.append(
                submit.submit_job(
                    session,
                    settings,
                    spec=config,
                    base_model_id=None,
                    enqueue=lambda job_id, _s: queued.append(job_id),
                    idempotency_key=f"r-{id(misses)}",
                )  # fmt: skip
            )
    (first, replayed_first), (second, replayed_second) = results
    assert not replayed_first and replayed_second and first.id == second.id
    assert queued == [first.id]
