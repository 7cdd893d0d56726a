"""Fixtures: one running stack (API + worker processes) per configuration, shared by the
tests of that configuration; small-job helpers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2e_stack import (
    SMALL_NET,
    TERMINAL,
    Stack,
    embedded_backend,
    mnist_dir,
    postgres_redis_backend,
    running_stack,
    services_reachable,
    submit,
    watch,
)


@pytest.fixture(
    scope="session",
    params=["embedded", pytest.param("postgres_redis", marks=pytest.mark.postgres)],
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Migrated database, ``lora-service api`` and one ``lora-service worker``."""
    name = request.param
    if name == "postgres_redis" and not services_reachable():
        pytest.skip("Postgres and Redis are not running on 127.0.0.1")
    root = tmp_path_factory.mktemp(name)
    make = embedded_backend if name == "embedded" else postgres_redis_backend
    with running_stack(make(root, mnist_dir()), root) as stack:
        yield stack


@pytest.fixture(scope="session")
def http(stack: Stack) -> Iterator[httpx.Client]:
    """HTTP client of the stack's API (bearer key set)."""
    with stack.client() as client:
        yield client


def _collapse(statuses: list[str]) -> list[str]:
    """Drop consecutive repeats: the distinct statuses in the order they were seen."""
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


@pytest.fixture(scope="session")
def pretrained(stack: Stack, http: httpx.Client) -> dict[str, Any]:
    """A small pre-training job run on the idle worker, with the POST -> running latency."""
    body = {
        "kind": "pretrain",
        "config": {"epochs": 2, "max_train_samples": 2000, **SMALL_NET},
    }
    started = time.perf_counter()
    posted = submit(http, body)
    running, seen = watch(http, posted["id"], until={"running", *TERMINAL}, timeout=30)
    latency = time.perf_counter() - started
    final, later = watch(http, posted["id"])
    return {
        "posted": posted,
        "running": running,
        "final": final,
        "seen": _collapse(["queued", *seen, *later]),
        "latency": latency,
        "stack": stack,
    }
