"""Fixtures for service tests: a registered base model, database URLs for SQLite and for a
fresh Postgres database (created per test session, dropped afterwards)."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from svc_helpers import PG_ADMIN_URL, add_model


def _postgres_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


@contextmanager
def empty_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty Postgres database ``<prefix>_<hex>`` (its URL), dropped afterwards;
    skips the test when Postgres is not running."""
    if not _postgres_up():
        pytest.skip("Postgres is not running on 127.0.0.1:5432")
    import psycopg

    from service.db.engine import get_engine

    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, migrated Postgres database ``lora_test_<hex>``; dropped at the end."""
    from service.db.migrations import upgrade

    with empty_postgres_database("lora_test") as url:
        upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database URL: a fresh SQLite file, or the session's Postgres database."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    from service.db.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'records.db'}"
    upgrade(url)
    return url


@pytest.fixture
def base_model(migrated) -> str:
    """A registered 5-class base model (784-32-48-5) in the test app's database."""
    return add_model(migrated.database_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database (no schema): a SQLite file, or a new Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'round_one.db'}"
        return
    with empty_postgres_database("lora_mig") as url:
        yield url
