"""Run one training job by id: claim it, train through ``models/``, record, register.

:func:`run_job` is a plain function (the Celery task only calls it), so tests and tools can
run a job in-process. The steps:

1. Claim: ``queued -> running`` under this worker's lease (``attempt += 1``), or take over
   a ``running`` job whose lease went stale (its worker died; see
   :mod:`service.jobs.leases`). Any other job (lease alive, cancelled, finished, at the
   attempt limit) is left alone: a redelivered message does nothing.
2. A :class:`~worker.lease.LeaseKeeper` thread renews ``heartbeat_at`` every
   ``HEARTBEAT_SECONDS`` and fences this worker if renewals stop succeeding.
3. Parse the stored spec back into its type (:func:`job_spec_of`); build from it the data
   subset and the network (a fresh MLP, a copy of the base model, or the base with LoRA
   injected), then ``models.training.train`` with a per-epoch callback and a
   ``should_stop`` that asks the database for ``cancel_requested`` at most every
   ``CANCEL_POLL_SECONDS``. After every epoch the callback measures, for fine-tunes, the
   accuracy on the base's digits as served (``base_val_accuracy``, see
   ``models.evaluation.base_digits_accuracy``), writes the epoch's weights as a kept
   checkpoint (:mod:`worker.checkpoints`), and records in one transaction the epoch's
   metrics, its ``metrics`` and ``checkpoint`` events, the checkpoint's record and the
   progress; then drops checkpoints beyond the last ``keep_checkpoints`` plus the best.
   The resumable training state goes to ``{artifact_dir}/checkpoints/{job_id}/`` after
   every epoch; a later attempt resumes from it (weights, optimizer, RNG), re-recording
   the metrics of the epochs it holds (upserts, and events recorded once per fact).
   ``early_stopping`` ends training once its rule says so (``models.training``).
4. Success: the epoch named by ``select`` (best by ``select_metric``, or last) becomes
   the result: when it is not the last, its weights are loaded back and tested. Write the
   model (``{artifact_dir}/models/{id}/``) or the PEFT adapter
   (``{artifact_dir}/adapters/{id}/``), then in one transaction mark the job ``succeeded``
   (with its event, an early-stop message, and the webhook's outbox row) and register the
   record. Artifact ids derive from the job id (``job_X`` -> ``mdl_X`` / ``adp_X``), so a
   repeated run rewrites the same files instead of adding new ones. Kept checkpoints
   stay (they can be published later); the resumable state is removed.
5. Cancelled (at a step boundary or just before registration): nothing is registered, the
   written files, checkpoints and their records are removed, the job ends ``cancelled``.
6. Past its maximum runtime since its first start (the smaller of the spec's
   ``max_runtime_seconds`` and ``JOB_MAX_RUNTIME_SECONDS``): ``failed`` with ``timeout``.
   Worker shutting down (SIGTERM, :mod:`worker.shutdown`): training stops at the next
   step and the job is handed back (``queued``, new message) to resume from its checkpoint.
7. Any exception: ``failed`` with ``{code, message}`` (see :func:`describe_failure`); a full
   disk is ``storage_full`` and frees the job's checkpoints (nothing half-written stays:
   every file is written to a temporary name and renamed). The epoch's record and the
   success transaction retry while the database is unreachable, until the lease fence.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service.core import store
from service.core.artifacts import (
    checkpoint_dir,
    checkpoint_file,
)
from service.core.job_spec import (
    FinetuneLoraSpec,
    JobSpec,
    parse_stored,
)
from service.core.logs import attempt_var
from service.core.settings import Settings, get_settings
from service.db import checkpoint_records, job_records
from service.db.engine import session_factory
from service.db.retry import retry_locked, retry_unreachable
from service.db.tables import JobRecord
from service.jobs import events, leases
from service.jobs import state as job_state
from service.jobs.queue import enqueue_job
from service.jobs.sweeps import plan as sweep_plan
from worker import observe
from worker.build import JobFailure, build_network, load_base_digits, load_data
from worker.checkpoints import EpochCheckpoints
from worker.device import resolve_device
from worker.failure import describe_failure, runtime_deadline, runtime_limit
from worker.lease import LeaseKeeper, StopCheck, fence_after
from worker.remote_state import drop_state, restore_state, save_state
from worker.results import register_artifact, select_epoch, write_artifact
from worker.resume import prepare_resume
from worker.shutdown import SHUTTING_DOWN, hand_back

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.5


def default_worker_id() -> str:
    """``host:pid``: names the process that holds a job's lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(
    factory: sessionmaker[Session], job_id: str, worker_id: str, settings: Settings
) -> JobRecord | None:
    """Claim a queued job, or take over a running one whose lease is stale; None if neither."""
    with factory() as session:
        job = retry_locked(session, lambda: job_state.claim_job(session, job_id, worker_id))
        if job is None:
            job = retry_locked(
                session,
                lambda: leases.take_over_stale(
                    session,
                    job_id,
                    worker_id,
                    lease_seconds=settings.lease_seconds,
                    max_attempts=settings.max_attempts,
                ),
            )
            if job is not None:
                log.warning("job %s: took over a stale lease (attempt %d)", job_id, job.attempt)
    return job


def run_job(job_id: str, settings: Settings | None = None, worker_id: str | None = None) -> str:
    """Run job ``job_id`` to its end and return its final status.

    Returns:
        ``succeeded``, ``failed`` or ``cancelled``; ``skipped`` when there was nothing to
        run (not queued and no stale lease: a redelivered message is a no-op);
        ``lease_lost`` when this worker lost the lease (taken over, or fenced).
    Raises:
        Nothing from training: every exception ends the job ``failed``. Database errors
        while claiming or recording the failure propagate (the lease then goes stale and
        a reaper requeues the job).
    """
    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    factory = session_factory(settings.database_url)
    before_claim = time.monotonic()
    job = _claim(factory, job_id, worker_id, settings)
    if job is None:
        log.info("job %s is not queued and holds no stale lease; nothing to do", job_id)
        return "skipped"
    attempt_var.set(job.attempt)  # log lines carry it (job_id: worker.tasks)
    observe.job_started(job_id, job.kind)
    log.info("job %s (%s) running, attempt %d, on %s", job_id, job.kind, job.attempt, worker_id)
    keeper = LeaseKeeper(
        factory,
        job_id,
        worker_id,
        settings.heartbeat_seconds,
        fence_seconds=fence_after(settings.lease_seconds, settings.heartbeat_seconds),
        started=before_claim,
    )
    stop = StopCheck(
        factory, job_id, worker_id, CANCEL_POLL_SECONDS, lease=keeper, shutdown=SHUTTING_DOWN,
        deadline=runtime_deadline(job, runtime_limit(job, settings)),
    )  # fmt: skip
    code = None
    with keeper:
        try:
            status = _train_and_publish(_Run(job, settings, factory, worker_id, stop))
        except Exception as exc:
            code, message = describe_failure(exc)
            log.exception("job %s failed: %s", job_id, code)
            with factory() as session:
                failed = job_state.mark_failed(
                    session, job_id, code=code, message=message, worker_id=worker_id
                )
            if failed and code == "storage_full":  # it never resumes: free what it took
                _drop_checkpoints(factory, settings, job_id)
            status = "failed"
    if status == "failed" and code is None:
        code = stop.reason  # ended by the stop check: "timeout"
    observe.job_ended(job_id, job.kind, status, code)
    log.info("job %s ended %s (attempt %d)", job_id, status, job.attempt)
    return status


@dataclass
class _Run:
    """One attempt at a job: its row as claimed and what the steps below share."""

    job: JobRecord
    settings: Settings
    factory: sessionmaker[Session]
    worker_id: str
    stop: StopCheck
    device: dict[str, str] = field(default_factory=dict)  # what it trained on (test_metrics)


def job_spec_of(job: JobRecord) -> JobSpec:
    """The job's stored spec, parsed back into its type (round-one rows included).

    Raises:
        JobFailure: ``invalid_config`` when the stored JSON no longer validates.
    """
    try:
        return parse_stored(job.kind, job.config)
    except ValueError as exc:
        raise JobFailure(
            "invalid_config", f"Stored config of job {job.id} is invalid: {exc}"
        ) from exc


def _drop_checkpoints(factory: sessionmaker[Session], settings: Settings, job_id: str) -> None:
    """Remove a job's checkpoint records and files (a job that never resumes)."""
    with factory() as session:
        checkpoint_records.delete_checkpoints(session, job_id)
        session.commit()
    store.delete(settings, checkpoint_dir(settings, job_id))


def _finish_stopped(run: _Run, reason: str | None) -> str:
    """End a job that stopped before registering: ``cancelled`` if asked (its checkpoint
    removed: a cancelled job never resumes); ``requeued`` when the worker shuts down (the
    job handed back, see :mod:`worker.shutdown`); else ``lease_lost`` (nothing written)."""
    if reason == "cancel_requested":
        with run.factory() as session:
            done = job_state.finish_cancelled(session, run.job.id, run.worker_id)
        if done:
            _drop_checkpoints(run.factory, run.settings, run.job.id)
        return "cancelled"
    if reason == "timeout":
        limit = runtime_limit(run.job, run.settings) or 0.0
        message = f"The job ran longer than its maximum runtime of {limit:g} s."
        with run.factory() as session:
            failed = job_state.mark_failed(
                session, run.job.id, code="timeout", message=message, worker_id=run.worker_id
            )
        if failed:
            _drop_checkpoints(run.factory, run.settings, run.job.id)
        return "failed"
    if reason == "shutdown" and not run.stop.lease_expired():
        handed = hand_back(run.factory, run.job.id, run.worker_id, run.job.attempt, run.settings)
        return "requeued" if handed else "lease_lost"
    return "lease_lost"


def _train_and_publish(run: _Run) -> str:
    from models.evaluation import base_digits_accuracy
    from models.training import train

    job, stop = run.job, run.stop
    spec = job_spec_of(job)
    splits = load_data(run.settings, spec)
    device, device_name = resolve_device(spec.device)
    run.device = {"device": device.type, "device_name": device_name}
    log.info("job %s trains on %s (%s)", job.id, device.type, device_name)
    base_digits = load_base_digits(run.settings, run.factory, job, spec)
    if base_digits is not None:
        base_digits = base_digits.to(device)
    model = build_network(run.factory, job, spec, run.settings)
    if stop.poll():
        return _finish_stopped(run, stop.reason)
    checkpoint = checkpoint_file(run.settings, job.id)
    restore_state(run.settings, job.id)  # another host's state, with an s3:// store
    prepare_resume(run.factory, job, run.worker_id, checkpoint)
    kept = EpochCheckpoints(run.settings, job.id, job.base_model_id, spec)

    def on_epoch(metrics: Any) -> bool:
        observe.epoch_done(job.kind, metrics)
        save_state(run.settings, job.id)  # with an s3:// store: resumable on another host
        values = metrics.as_dict()
        epoch = int(values.pop("epoch"))
        if base_digits is not None:
            values["base_val_accuracy"] = base_digits_accuracy(
                model, base_digits.val_x, base_digits.val_y
            )
        kept.write(epoch, model)

        def record() -> bool:
            with run.factory() as session:
                return retry_locked(
                    session,
                    lambda: job_state.record_epoch(
                        session,
                        job.id,
                        run.worker_id,
                        epoch,
                        values,
                        also=lambda: kept.record(session, epoch, values),
                    ),
                )

        try:
            recorded = retry_unreachable(record, give_up=stop.lease_expired)
        except Exception:
            if not stop.lease_expired():
                raise
            log.warning("job %s: database unreachable past the lease fence; stopping", job.id)
            recorded = False  # another run may resume this job: write nothing more
        if not recorded:
            stop.reason = stop.reason or "lease_lost"
        log.info("job %s epoch %d/%d done (attempt %d)", job.id, epoch, job.epochs, job.attempt)
        try:  # after the log line: the epoch is recorded, pruning is tidying
            kept.prune(run.factory)
        except DBAPIError:  # the database went away meanwhile: the next epoch prunes
            log.warning("job %s: could not prune checkpoints", job.id, exc_info=True)
        return stop()

    result = train(
        model,
        splits,
        spec.train_config(),
        on_epoch=on_epoch,
        should_stop=stop,
        checkpoint_path=checkpoint,
        device=device,
        early_stopping=spec.early_stopping.rule() if spec.early_stopping else None,
    )
    if result.cancelled:
        return _finish_stopped(run, stop.reason or stop.poll())
    result, selected = select_epoch(kept, spec, model, splits, result)
    base_test = (  # the base's test digits as served (sweeps report it); one definition
        None
        if base_digits is None
        else base_digits_accuracy(model, base_digits.test_x, base_digits.test_y)
    )
    model.cpu()
    return _publish(run, spec, model, result, selected, base_test)


def _publish(
    run: _Run, spec: JobSpec, model: Any, result: Any, selected: int, base_test: float | None
) -> str:
    """Write the artifact, then mark succeeded + register in one transaction (with the
    early-stop message, when training stopped early).

    Writes nothing once the lease is gone; if the job was taken over meanwhile and another
    run registered its artifact (same path, derived from the job id), that is left alone.
    """
    job, stop = run.job, run.stop
    test_metrics = {
        "accuracy": result.test_accuracy,
        "loss": result.test_loss,
        "per_digit_errors": {str(d): n for d, n in (result.per_digit_errors or {}).items()},
        "train_seconds": result.train_seconds,
        "epochs_completed": result.epochs_completed,
        "selected_epoch": selected,
        "stopped_early": result.stopped_early,
        "base_test_accuracy": base_test,
        **run.device,
        "precision": result.precision,
    }
    if stop.poll():
        return _finish_stopped(run, stop.reason)
    artifact_id, directory = artifact = write_artifact(run.settings, job, spec, model)
    is_adapter = isinstance(spec, FinetuneLoraSpec)

    def commit_success() -> tuple[bool, list[str]]:
        follow_ups: list[str] = []  # a sweep's jobs that this one's success creates
        with run.factory() as session:
            if result.stopped_early:
                events.record_message(
                    session,
                    job.id,
                    "early_stop",
                    result.stopped_early,
                    {"epoch": result.epochs_completed, "selected_epoch": selected},
                )
            done = job_state.mark_succeeded(
                session,
                job.id,
                run.worker_id,
                test_accuracy=result.test_accuracy,
                test_metrics=test_metrics,
                result_model_id=None if is_adapter else artifact_id,
                result_adapter_id=artifact_id if is_adapter else None,
                epochs_completed=result.epochs_completed,
            )
            if done:
                register_artifact(session, job, spec, model, result, artifact)
                model_id = None if is_adapter else artifact_id
                follow_ups = sweep_plan.on_job_succeeded(session, job.id, model_id)
            else:
                session.rollback()
            session.commit()
        return done, follow_ups

    done, follow_ups = retry_unreachable(commit_success, give_up=stop.lease_expired)
    if not done:
        with run.factory() as session:
            now = job_records.get_job(session, job.id)
        if now is None or now.status != "succeeded":
            store.delete(run.settings, directory)
        return _finish_stopped(run, stop.poll())
    drop_state(run.settings, job.id)  # kept epochs stay
    sweep_plan.enqueue_all(follow_ups, run.settings, enqueue_job)  # a sweep's next jobs
    return "succeeded"
