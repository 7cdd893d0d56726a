"""Fixtures for the artifact-store tests: a moto S3 server for the session, a fresh bucket
and ``s3://`` settings per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for helper_dir in (HERE, HERE.parent / "e2e", HERE.parent / "robustness"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))

from s3_server import S3Server, running_s3_server  # noqa: E402


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free port (real HTTP)."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_settings(s3_server: S3Server, settings, monkeypatch: pytest.MonkeyPatch):
    """The embedded ``settings`` with an ``s3://`` ARTIFACT_URL in a fresh bucket."""
    from service.core.settings import Settings, get_settings

    bucket = s3_server.new_bucket()
    for key, value in s3_server.env(bucket).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield Settings()
    get_settings.cache_clear()
