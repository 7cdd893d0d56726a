"""Observability in-process: log formats, /metrics access rules, bounded adapter labels,
the request id rules, the heartbeat check. (Real processes: tests/e2e/test_observability_e2e.py.)"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.core.logs import ContextFilter, JsonFormatter, job_context, request_id_var


def _record(message: str, *args: object) -> logging.LogRecord:
    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, message, args, None)
    ContextFilter().filter(record)
    return record


def test_json_lines_carry_context_ids_and_mask_bearer_tokens() -> None:
    token = request_id_var.set("req_abc")
    try:
        with job_context("job_123", attempt=2):
            line = JsonFormatter().format(_record("sent %s", "Authorization: Bearer s3cr3t-k3y"))
    finally:
        request_id_var.reset(token)
    obj = json.loads(line)
    assert obj["level"] == "INFO" and obj["logger"] == "service.x" and obj["time"].endswith("Z")
    assert (obj["request_id"], obj["job_id"], obj["attempt"]) == ("req_abc", "job_123", 2)
    assert "s3cr3t-k3y" not in line and obj["message"] == "sent Authorization: Bearer ***"
    outside = json.loads(JsonFormatter().format(_record("plain")))
    assert "job_id" not in outside and "request_id" not in outside


def _app(make_app, **overrides):  # noqa: ANN001, ANN202
    return TestClient(make_app(**overrides))


@pytest.fixture
def make_app(migrated):  # noqa: ANN001, ANN201
    from service.api.app import create_app

    def make(**overrides):  # noqa: ANN003, ANN202
        return create_app(type(migrated).model_validate({**migrated.model_dump(), **overrides}))

    return make


def test_metrics_token_replaces_the_api_key_on_metrics_only(make_app) -> None:  # noqa: ANN001
    with _app(make_app, api_keys=["api-key"], metrics_token="scrape-token") as c:
        assert (
            c.get("/metrics", headers={"Authorization": "Bearer scrape-token"}).status_code == 200
        )
        for headers in ({}, {"Authorization": "Bearer api-key"}):
            resp = c.get("/metrics", headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
        assert c.get("/jobs", headers={"Authorization": "Bearer scrape-token"}).status_code == 401
    with _app(make_app, api_keys=["api-key"]) as c:
        assert c.get("/metrics").status_code == 401
        ok = c.get("/metrics", headers={"Authorization": "Bearer api-key"})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(ok.text)}
        assert {"lora_jobs", "lora_http_requests", "lora_predict_batch_size"} <= names


def test_metrics_disabled_answers_404(make_app) -> None:  # noqa: ANN001
    with _app(make_app, metrics_enabled=False) as c:
        resp = c.get("/metrics")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "metrics_disabled"


def test_request_id_is_taken_when_valid_else_generated(make_app) -> None:  # noqa: ANN001
    with _app(make_app) as c:
        mine = c.get("/jobs/job_nope", headers={"X-Request-ID": "abc-123"})
        assert mine.headers["x-request-id"] == mine.json()["error"]["request_id"] == "abc-123"
        bad = c.get("/health/live", headers={"X-Request-ID": "no spaces allowed"})
        assert bad.headers["x-request-id"].startswith("req_")


def test_adapter_labels_are_capped_and_forgotten_ones_removed(migrated) -> None:  # noqa: ANN001
    from service.serving.metrics import PREDICTIONS, ServingMetrics

    metrics = ServingMetrics(migrated.model_copy(update={"metrics_adapter_labels": 2}))
    for adapter in ("cap_a", "cap_b", "cap_c", None):
        metrics.predicted("cap_model", adapter, 3)

    def series() -> dict:  # noqa: E306
        samples = [s for f in PREDICTIONS.collect() for s in f.samples if s.name.endswith("_total")]
        return {s.labels["adapter"]: s.value for s in samples if s.labels["model"] == "cap_model"}

    assert series() == {"cap_a": 3, "cap_b": 3, "_other": 3, "none": 3}
    metrics.forgotten("adapter", "cap_a")
    assert "cap_a" not in series()
    metrics.predicted("cap_model", "cap_d", 1)  # the freed label slot is reused
    assert series()["cap_d"] == 1
    metrics.forgotten("model", "cap_model")
    assert series() == {}


def test_heartbeat_check(tmp_path: Path) -> None:
    from worker.observe import check_heartbeat

    path = tmp_path / "w.heartbeat"
    assert check_heartbeat(path, 5)[0] is False
    path.write_text(json.dumps({"time": time.time(), "pid": 1, "worker": "w", "job_id": None}))
    assert check_heartbeat(path, 5)[0] is True
    stale, why = check_heartbeat(path, 5, now=time.time() + 60)
    assert stale is False and "hung or dead" in why


def test_multiproc_dir_only_in_settings_falls_back_to_this_process(
    make_app, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # noqa: ANN001
    """prometheus-client reads PROMETHEUS_MULTIPROC_DIR from the environment; a value it
    does not see must not empty the scrape (an empty directory would)."""
    with caplog.at_level(logging.ERROR), _app(make_app, prometheus_multiproc_dir=tmp_path) as c:
        c.get("/health/live")
        text = c.get("/metrics").text
    assert 'lora_http_requests_total{method="GET",route="/health/live",status="200"}' in text
    assert "not in the process environment" in caplog.text
