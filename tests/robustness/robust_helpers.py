"""Helpers for the robustness tests: start workers with short leases, kill them, read what
happened from their logs, the database and the artifact directory.

Workers log ``job <id> epoch <k>/<n> done (attempt <a>)`` after every finished epoch and
``job <id> resumes after epoch <k>`` when a run starts from a checkpoint
(:mod:`worker.runner`); these lines are how the tests see which epochs trained where.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from e2e_stack import WORKER_COMMAND, Proc, Stack, start

from service.core.settings import Settings

T = TypeVar("T")

LEASE_ENV = {
    "HEARTBEAT_SECONDS": "0.5",
    "LEASE_SECONDS": "3",
    "REAPER_SECONDS": "0.5",
    "MAX_ATTEMPTS": "3",
    "OMP_NUM_THREADS": "1",  # two workers share two cores: no thread oversubscription
}
SMALL_NET = {"hidden1": 32, "hidden2": 32}
# ~1-3 s per epoch on a busy 2-core host: long enough to stop a worker inside an epoch.
SLOW_EPOCHS = {"max_train_samples": 6000, "batch_size": 4, **SMALL_NET}
EPOCH_DONE = re.compile(r"job (job_\w+) epoch (\d+)/\d+ done \(attempt (\d+)\)")
RECEIVED = re.compile(r"Task worker\.tasks\.run_job\[[^\]]+\] received")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy (returned) or ``timeout`` s pass.

    Raises:
        AssertionError: naming ``what`` on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def launch_workers(stack: Stack, count: int, **env: str) -> list[Proc]:
    """Start ``count`` workers (settings of ``stack`` + :data:`LEASE_ENV` + ``env``) without
    waiting for them; see :func:`wait_ready`."""
    full_env = {**stack.env, **LEASE_ENV, **env}
    procs = []
    for _ in range(count):
        proc = start(f"worker{len(stack.workers)}", WORKER_COMMAND, full_env, stack.root)
        stack.workers.append(proc)
        procs.append(proc)
    return procs


def wait_ready(procs: Iterable[Proc], timeout: float = 120.0) -> None:
    """Wait until every worker of ``procs`` reports Celery's `` ready.``.

    Raises:
        RuntimeError: a worker exited or was not ready within ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    for proc in procs:
        while " ready." not in proc.output():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} not ready:\n{proc.output()[-4000:]}")
            time.sleep(0.1)


def start_workers(stack: Stack, count: int, **env: str) -> list[Proc]:
    """:func:`launch_workers`, then :func:`wait_ready`."""
    procs = launch_workers(stack, count, **env)
    wait_ready(procs)
    return procs


def ensure_workers(stack: Stack, count: int, **env: str) -> list[Proc]:
    """At least ``count`` live workers on ``stack`` (launching the missing ones); returns
    every live worker, all ready."""
    missing = count - len(alive(stack.workers))
    if missing > 0:
        launch_workers(stack, missing, **env)
    procs = alive(stack.workers)
    wait_ready(procs)
    return procs


def kill(proc: Proc) -> None:
    """SIGKILL ``proc`` (no clean-up of any kind, as an OOM kill) and reap it."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)


def freeze(proc: Proc) -> None:
    """SIGSTOP ``proc``: it stops between two instructions, heartbeat thread included."""
    proc.popen.send_signal(signal.SIGSTOP)


def alive(procs: Iterable[Proc]) -> list[Proc]:
    """The processes of ``procs`` still running."""
    return [p for p in procs if p.popen.poll() is None]


def holder(stack: Stack, worker_id: str | None) -> Proc | None:
    """The worker process whose lease id (``host:pid``) is ``worker_id``."""
    if not worker_id:
        return None
    pid = int(worker_id.rsplit(":", 1)[1])
    return next((p for p in stack.workers if p.popen.pid == pid), None)


def settings_of(stack: Stack, **env: str) -> Settings:
    """The :class:`Settings` the stack's processes run with (for in-test database access)."""
    values = {k.lower(): v for k, v in {**stack.env, **env}.items()}
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@contextmanager
def session(stack: Stack):  # noqa: ANN201 (a context manager of Session)
    """A session on the stack's database (commits on success)."""
    from service.db.engine import session_scope

    with session_scope(stack.env["DATABASE_URL"]) as s:
        yield s


def job_row(stack: Stack, job_id: str) -> Any:
    """The job record as stored now."""
    from service.db import job_records

    with session(stack) as s:
        return job_records.get_job(s, job_id)


def metric_rows(stack: Stack, job_id: str) -> list[tuple[int, str, float]]:
    """Every metrics row of the job: ``(epoch, name, value)``."""
    from sqlalchemy import select

    from service.db.tables import MetricRecord

    with session(stack) as s:
        rows = s.execute(
            select(MetricRecord.epoch, MetricRecord.name, MetricRecord.value).where(
                MetricRecord.job_id == job_id
            )
        )
        return sorted((int(e), str(n), float(v)) for e, n, v in rows)


def epochs_done(procs: Iterable[Proc], job_id: str) -> dict[str, list[int]]:
    """Per worker name, the epochs of ``job_id`` it finished (from its log), in order."""
    found: dict[str, list[int]] = {}
    for proc in procs:
        epochs = [int(m[2]) for m in EPOCH_DONE.finditer(proc.output()) if m[1] == job_id]
        if epochs:
            found[proc.name] = epochs
    return found


def received(proc: Proc) -> int:
    """How many ``run_job`` messages the worker has received so far."""
    return len(RECEIVED.findall(proc.output()))


def checkpoint_epoch(path: Path) -> int | None:
    """The last finished epoch stored in a training checkpoint (None if absent)."""
    from models.checkpoint import read_training_meta

    meta = read_training_meta(path)
    return None if meta is None else int(meta["epoch"])


@dataclass
class Tally:
    """Figures for the closing note, summed over the robustness tests of one session."""

    kills: int = 0
    idle_kills: int = 0
    jobs: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    run_twice: set[str] = field(default_factory=set)

    def check(self, procs: Iterable[Proc], job_id: str, final_status: str | None) -> None:
        """Count ``job_id``: lost if it did not end in a terminal status; run twice if any
        of its epochs finished in more than one run (per worker logs)."""
        self.jobs.add(job_id)
        if final_status not in ("succeeded", "failed", "cancelled"):
            self.lost.add(job_id)
        counts = Counter(e for epochs in epochs_done(procs, job_id).values() for e in epochs)
        if any(n > 1 for n in counts.values()):
            self.run_twice.add(job_id)

    def summary(self) -> str:
        return (
            f"robustness: {self.kills} SIGKILLs of workers running a job survived "
            f"(+{self.idle_kills} of idle workers); {len(self.jobs)} jobs checked, "
            f"jobs lost: {len(self.lost)}, jobs run twice: {len(self.run_twice)}"
        )


TALLY = Tally()


def env_path(*dirs: Path) -> str:
    """A ``PYTHONPATH`` value: ``dirs`` first, then the current one (if any)."""
    parts = [str(d) for d in dirs]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def register_base(stack: Stack, hidden: int = 32) -> str:
    """Save an untrained 784-hidden-hidden-5 MLP for digits 5-9 and register it (a base
    model for LoRA jobs, without spending a pre-training job on it); returns its id."""
    import secrets

    import torch

    from models.checkpoint import save_model
    from models.classifier import MLP, MLPConfig, count_parameters
    from service.core.artifacts import model_dir
    from service.db import model_records

    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden1=hidden, hidden2=hidden, n_classes=5))
    model_id = f"mdl_base_{secrets.token_hex(4)}"
    directory = model_dir(settings_of(stack), model_id)
    save_model(directory, model, [5, 6, 7, 8, 9])
    with session(stack) as s:
        model_records.register_model(
            s,
            model_id=model_id,
            kind="pretrain",
            job_id=None,
            parent_id=None,
            classes=[5, 6, 7, 8, 9],
            architecture=model.config.to_dict(),
            n_parameters=count_parameters(model),
            test_accuracy=None,
            path=str(directory),
        )
    return model_id


def running_on(stack: Stack, job_id: str, attempt: int, timeout: float = 60) -> tuple[Any, Proc]:
    """Wait until ``job_id`` runs its ``attempt``-th run; returns (job row, worker process).

    Raises:
        AssertionError: the job ended meanwhile, or ``timeout`` s passed.
    """

    def probe() -> tuple[Any, Proc] | None:
        row = job_row(stack, job_id)
        if row.status == "running" and row.attempt == attempt:
            proc = holder(stack, row.worker_id)
            assert proc is not None, f"unknown worker {row.worker_id}"
            return row, proc
        assert row.status in ("queued", "running"), f"{row.status}: {row.error_message}"
        return None

    return wait_for(probe, timeout, f"{job_id} running attempt {attempt}\n{stack.logs()}")
