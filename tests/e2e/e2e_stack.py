"""Real processes for end-to-end tests: ``lora-service api`` and ``lora-service worker``.

The commands here are the ones docker-compose.yml and the Procfile run
(tests/service/test_compose.py checks that). Two configurations:

* embedded: SQLite database + kombu SQL broker on SQLite, in a temporary directory;
* postgres_redis: a fresh Postgres database (``CREATE DATABASE lora_e2e_<hex>``, dropped
  afterwards) and Redis with a random db number and a unique queue name, so parallel runs
  never share a queue.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.cli import PROCESS_COMMANDS

MIGRATE_COMMAND = PROCESS_COMMANDS["migrate"]
API_COMMAND = PROCESS_COMMANDS["api"]
WORKER_COMMAND = PROCESS_COMMANDS["worker"]

TERMINAL = {"succeeded", "failed", "cancelled"}
SMALL_NET = {"hidden1": 32, "hidden2": 32}
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
API_KEY = "e2e-test-key"
SETTINGS_VARS = (
    "DATABASE_URL",
    "BROKER_URL",
    "ARTIFACT_DIR",
    "DATA_DIR",
    "MNIST_DOWNLOAD",
    "AUTO_MIGRATE",
    "TRAINING_QUEUE",
    "API_KEYS",
    "HOST",
    "PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "WORKER_METRICS_PORT",
    "WORKER_HEARTBEAT_FILE",
    "METRICS_TOKEN",
    "METRICS_ENABLED",
)


REPO_ROOT = Path(__file__).resolve().parents[2]


def mnist_dir() -> Path:
    """MNIST for tests: $DATA_DIR, else ../shared/data beside the repo (as tests/conftest.py)."""
    return Path(os.environ.get("DATA_DIR") or (REPO_ROOT.parent / "shared" / "data")).resolve()


def executable(command: list[str]) -> list[str]:
    """``command`` with ``lora-service`` resolved next to this interpreter (the venv's)."""
    script = Path(sys.executable).with_name(command[0])
    return [str(script) if script.exists() else command[0], *command[1:]]


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(overrides: dict[str, str]) -> dict[str, str]:
    """The parent environment without any of our settings, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS_VARS}
    env.update(overrides)
    return env


@dataclass
class Backend:
    """One configuration: its settings as environment variables and how to clean up."""

    name: str
    env: dict[str, str]
    cleanup: Callable[[], None] = lambda: None


def embedded_backend(root: Path, data_dir: Path) -> Backend:
    """SQLite + SQLite broker under ``root``."""
    return Backend(
        "embedded",
        {
            "DATABASE_URL": f"sqlite:///{root / 'lora.db'}",
            "BROKER_URL": f"sqla+sqlite:///{root / 'broker.db'}",
            "ARTIFACT_DIR": str(root / "artifacts"),
            "DATA_DIR": str(data_dir),
            "MNIST_DOWNLOAD": "false",
        },
    )


def services_reachable() -> bool:
    """True when Postgres and Redis accept TCP connections on 127.0.0.1."""
    for port in (5432, REDIS_PORT):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
    return True


def postgres_redis_backend(root: Path, data_dir: Path) -> Backend:
    """A fresh Postgres database and a private Redis queue; ``cleanup`` drops them."""
    import psycopg
    import redis

    suffix = secrets.token_hex(6)
    db_name = f"lora_e2e_{suffix}"
    queue = f"training-e2e-{suffix}"
    redis_db = 1 + secrets.randbelow(15)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')

    def cleanup() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=redis_db)
        client.delete(queue, f"_kombu.binding.{queue}")
        client.close()

    return Backend(
        "postgres_redis",
        {
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}",
            "BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
            "TRAINING_QUEUE": queue,
            "ARTIFACT_DIR": str(root / "artifacts"),
            "DATA_DIR": str(data_dir),
            "MNIST_DOWNLOAD": "false",
        },
        cleanup,
    )


@dataclass
class Proc:
    """A child process whose output goes to ``log``."""

    name: str
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def run_command(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 120):
    """Run a short command to completion; returns ``subprocess.CompletedProcess``."""
    return subprocess.run(
        executable(command), env=base_env(env), cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def start(name: str, command: list[str], env: dict[str, str], cwd: Path) -> Proc:
    """Start ``command`` in the background, output to ``cwd/<name>.log``."""
    log = cwd / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        executable(command), env=base_env(env), cwd=cwd, stdout=handle, stderr=subprocess.STDOUT
    )
    handle.close()
    return Proc(name, popen, log)


@dataclass
class Stack:
    """A migrated database, one API process and worker processes for one backend."""

    backend: Backend
    root: Path
    port: int = field(default_factory=free_port)
    api: Proc | None = None
    workers: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.backend.env,
            "API_KEYS": API_KEY,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "INFO",
        }

    def client(self) -> httpx.Client:
        """An HTTP client for the API with the bearer key."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        )

    def migrate(self) -> None:
        result = run_command(MIGRATE_COMMAND, self.env, self.root)
        assert result.returncode == 0, result.stderr

    def start_api(self, timeout: float = 90.0) -> None:
        self.api = start("api", API_COMMAND, self.env, self.root)
        deadline = time.monotonic() + timeout
        with self.client() as http:
            while time.monotonic() < deadline:
                if self.api.popen.poll() is not None:
                    raise RuntimeError(f"API exited:\n{self.api.output()[-4000:]}")
                try:
                    if http.get("/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"API not healthy after {timeout} s:\n{self.api.output()[-4000:]}")

    def start_worker(self, timeout: float = 90.0) -> Proc:
        """Start one more worker and wait until Celery reports it ready."""
        proc = start(f"worker{len(self.workers)}", WORKER_COMMAND, self.env, self.root)
        self.workers.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in proc.output():
                return proc
            if proc.popen.poll() is not None:
                raise RuntimeError(f"worker exited:\n{proc.output()[-4000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{proc.output()[-4000:]}")

    def logs(self) -> str:
        """The tails of every process log (for failure messages)."""
        procs = ([self.api] if self.api else []) + self.workers
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in procs)

    def stop(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            proc.stop()


@contextmanager
def running_stack(backend: Backend, root: Path, workers: int = 1) -> Iterator[Stack]:
    """Migrate, start the API and ``workers`` workers; on exit stop them and clean the
    backend up."""
    stack = Stack(backend, root)
    try:
        stack.migrate()
        stack.start_api()
        for _ in range(workers):
            stack.start_worker()
        yield stack
    finally:
        stack.stop()
        backend.cleanup()


def submit(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST /jobs; asserts 202 and the Location header."""
    resp = http.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/jobs/{job['id']}"
    return job


def watch(
    http: httpx.Client, job_id: str, until: set[str] | None = None, timeout: float = 120.0
) -> tuple[dict[str, Any], list[str]]:
    """Poll GET /jobs/{id} every 20 ms until its status is in ``until`` (default: terminal).

    Returns:
        (the last job JSON, the distinct statuses seen in order).
    """
    until = until or TERMINAL
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/jobs/{job_id}").json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in until:
            return job, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.02)
