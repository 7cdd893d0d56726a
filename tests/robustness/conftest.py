"""Fixtures for the robustness tests: real API and worker processes (tests/e2e/e2e_stack.py)
with short leases, fresh Postgres databases and the SQLite/Postgres ``db_url`` of
tests/service/conftest.py and ``tiny_splits`` of tests/models/conftest.py, reused rather
than rewritten.

Lease timing used by every worker here: heartbeat 0.5 s, lease 3 s (a worker fences itself
after 2 s without a renewal), reaper every 0.5 s.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for helper_dir in (TESTS / "e2e", TESTS / "service", Path(__file__).resolve().parent):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))


def _load_conftest(package: str):  # noqa: ANN202 (a module)
    """tests/<package>/conftest.py under another module name (its fixtures are reused)."""
    spec = importlib.util.spec_from_file_location(
        f"{package}_tests_conftest", TESTS / package / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_service = _load_conftest("service")
postgres_url = _service.postgres_url
db_url = _service.db_url
tiny_splits = _load_conftest("models").tiny_splits

from e2e_stack import (  # noqa: E402
    Stack,
    embedded_backend,
    mnist_dir,
    postgres_redis_backend,
    running_stack,
    services_reachable,
)


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Postgres + Redis: a fresh database and queue, the API running, no worker yet."""
    if not services_reachable():
        pytest.skip("Postgres and Redis are not running on 127.0.0.1")
    root = tmp_path_factory.mktemp("robust_pg")
    with running_stack(postgres_redis_backend(root, mnist_dir()), root, workers=0) as stack:
        yield stack


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """SQLite database + SQLite broker, the API running, no worker yet."""
    root = tmp_path_factory.mktemp("robust_sqlite")
    with running_stack(embedded_backend(root, mnist_dir()), root, workers=0) as stack:
        yield stack


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 (pytest's reporter)
    """Print the figures for the closing note: kills survived, jobs lost, jobs run twice."""
    from robust_helpers import TALLY

    if TALLY.jobs:
        terminalreporter.write_line(TALLY.summary())
