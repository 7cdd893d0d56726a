"""The live event stream (Server-Sent Events) against a real HTTP server (uvicorn on a
loopback port) while the job runs in a worker thread: resume with ``Last-Event-ID`` without
a gap or a repeat, the end after the terminal event, ``?stream=true``, and bearer keys."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.live_server import LiveServer
from worker import runner

TINY = {"hidden1": 16, "hidden2": 16, "max_train_samples": 300}
STREAM = {"Accept": "text/event-stream"}


def sse_messages(lines: Iterator[str]) -> Iterator[dict]:
    """Parse an SSE stream (https://html.spec.whatwg.org/multipage/server-sent-events.html)
    into messages ``{"id", "event", "data"}``; comment lines (heartbeats) count as
    ``{"comment": ...}``."""
    message: dict = {}
    for line in lines:
        if line == "":
            if message:
                yield message
            message = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            message[name] = message.get(name, "") + value if name == "data" else value
    if message:
        yield message


def _follow(url: str, headers: dict, stop_after: int | None = None) -> tuple[list[dict], bool]:
    """Read a stream: (its event messages, whether the server ended it)."""
    got: list[dict] = []
    with httpx.stream("GET", url, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for message in sse_messages(resp.iter_lines()):
            if "comment" in message:
                continue
            got.append(message)
            if stop_after is not None and len(got) >= stop_after:
                return got, False
    return got, True


@pytest.fixture
def live(app):  # noqa: ANN001, ANN201
    with LiveServer(app) as server:
        yield server


def _start_job(live, migrated, epochs: int) -> tuple[str, threading.Thread]:  # noqa: ANN001
    resp = httpx.post(
        f"{live.url}/jobs", json={"kind": "pretrain", "config": {**TINY, "epochs": epochs}}
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    worker = threading.Thread(target=runner.run_job, args=(job_id, migrated, "w"), daemon=True)
    worker.start()
    return job_id, worker


def test_stream_resumes_with_last_event_id_without_gap_or_repeat(live, migrated) -> None:  # noqa: ANN001
    job_id, worker = _start_job(live, migrated, epochs=4)
    url = f"{live.url}/jobs/{job_id}/events"
    first, ended = _follow(url, STREAM, stop_after=3)
    assert not ended and [m["id"] for m in first] == ["1", "2", "3"]
    rest, ended = _follow(url, {**STREAM, "Last-Event-ID": first[-1]["id"]})
    assert ended  # the server closed the stream after the terminal event
    worker.join(60)

    streamed = first + rest
    ids = [int(m["id"]) for m in streamed]
    assert ids == list(range(1, len(ids) + 1))  # no gap, no repeat
    events = [json.loads(m["data"]) for m in streamed]
    assert [m["event"] for m in streamed] == [e["type"] for e in events]
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "succeeded"
    page = httpx.get(url, params={"limit": 1000}).json()["items"]
    assert page == events  # the stream sends exactly the log
    assert sum(e["type"] == "metrics" for e in events) == 4

    again, ended = _follow(f"{url}?stream=true&after=5", {})
    assert ended and [int(m["id"]) for m in again] == ids[5:]  # a finished job: ends at once


def test_stream_of_a_finished_job_and_bad_cursor(live, migrated) -> None:  # noqa: ANN001
    job_id, worker = _start_job(live, migrated, epochs=1)
    worker.join(60)
    url = f"{live.url}/jobs/{job_id}/events"
    messages, ended = _follow(url, {**STREAM, "Last-Event-ID": "999"})
    assert ended and messages == []
    bad = httpx.get(url, headers={**STREAM, "Last-Event-ID": "abc"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "Last-Event-ID"
    assert httpx.get(f"{live.url}/jobs/job_nope/events", headers=STREAM).status_code == 404


@pytest.fixture
def keyed_app(migrated, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    from service.api.app import create_app

    return create_app(migrated.model_copy(update={"api_keys": [_secret("k-1")]}))


def _secret(value: str):  # noqa: ANN202
    from pydantic import SecretStr

    return SecretStr(value)


def test_stream_takes_the_bearer_key_in_a_header(keyed_app, migrated) -> None:  # noqa: ANN001
    with LiveServer(keyed_app) as server:
        auth = {"Authorization": "Bearer k-1"}
        resp = httpx.post(f"{server.url}/jobs", json={"kind": "pretrain", "config": TINY},
                          headers=auth)  # fmt: skip
        job_id = resp.json()["id"]
        url = f"{server.url}/jobs/{job_id}/events"
        denied = httpx.get(url, headers=STREAM)
        assert denied.status_code == 401
        runner.run_job(job_id, migrated, worker_id="w")
        messages, ended = _follow(url, {**STREAM, **auth})
        assert ended and json.loads(messages[-1]["data"])["data"]["status"] == "succeeded"


def test_heartbeats_while_waiting_and_the_stream_ends_on_cancel(migrated) -> None:  # noqa: ANN001
    from service.api.app import create_app

    app = create_app(migrated.model_copy(update={"event_ping_seconds": 0.1}))
    with LiveServer(app) as server:
        job_id = httpx.post(f"{server.url}/jobs", json={"kind": "pretrain"}).json()["id"]
        seen: list[dict] = []
        with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events", headers=STREAM,
                          timeout=30) as resp:  # fmt: skip
            for message in sse_messages(resp.iter_lines()):
                seen.append(message)
                if sum("comment" in m for m in seen) == 3:  # heartbeats while nothing happens
                    assert httpx.post(f"{server.url}/jobs/{job_id}/cancel").status_code == 200
    events = [json.loads(m["data"]) for m in seen if "data" in m]
    assert [e["data"]["status"] for e in events] == ["queued", "cancelled"]
