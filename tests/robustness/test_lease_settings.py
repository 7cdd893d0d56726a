"""The Celery and lease settings that the robustness guarantees rest on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.settings import Settings
from service.jobs.queue import celery_config, make_celery
from worker.lease import fence_after


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_visibility_timeout_is_set_where_celery_reads_it() -> None:
    settings = _settings(broker_url="redis://127.0.0.1:6379/0", visibility_timeout=5400)
    conf = celery_config(settings)
    assert conf["broker_transport_options"]["visibility_timeout"] == 5400
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    app = make_celery(settings)
    assert app.conf.broker_transport_options["visibility_timeout"] == 5400
    assert app.conf.result_backend is None  # no result backend: nothing else to keep in step


def test_lease_must_outlast_two_heartbeats() -> None:
    with pytest.raises(ValidationError, match="LEASE_SECONDS"):
        _settings(heartbeat_seconds=5, lease_seconds=10)
    settings = _settings(heartbeat_seconds=0.5, lease_seconds=3)
    fence = fence_after(settings.lease_seconds, settings.heartbeat_seconds)
    assert settings.heartbeat_seconds <= fence < settings.lease_seconds
