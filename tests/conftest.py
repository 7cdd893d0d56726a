"""Shared fixtures: an isolated embedded configuration (SQLite + artifacts in a temp dir),
a migrated database, the app and an in-process HTTP client.

Real-server fixtures (worker processes, uvicorn, Redis, Postgres) live next to the tests that
use them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def mnist_dir() -> Path:
    """The MNIST data directory for tests: $DATA_DIR, else ../shared/data beside the repo."""
    return Path(os.environ.get("DATA_DIR") or (REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Embedded settings isolated in ``tmp_path`` and installed as the process settings."""
    from service.core.settings import Settings, get_settings

    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'lora.db'}",
        "BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "DATA_DIR": str(mnist_dir()),
        "MNIST_DOWNLOAD": "false",
        "API_KEYS": "",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield Settings()
    get_settings.cache_clear()


@pytest.fixture
def migrated(settings):
    """Settings whose database has been brought to Alembic head."""
    from service.db.migrations import upgrade

    upgrade(settings.database_url)
    return settings


@pytest.fixture
def app(migrated):
    """The FastAPI app on the migrated embedded database."""
    from service.api.app import create_app

    return create_app(migrated)


@pytest.fixture
def client(app) -> Iterator:
    """In-process HTTP client (runs the app's lifespan)."""
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c
