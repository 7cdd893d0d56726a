"""What ``GET /sweeps/{id}`` reports: status, progress and per-variant statistics, all
derived from the sweep's jobs as stored now (nothing is cached).

Per variant, over its succeeded jobs (every seed, and every base with ``base_seeds``):
``n``, mean, sample std and the 95 % Student-t interval (:mod:`.stats`) of

* ``test_accuracy``: the job's test accuracy on its own digits (5-9 for the fine-tunes and
  the ceiling), from the epoch the job selected;
* ``base_accuracy``: accuracy on the base's test digits **as served**, the one definition
  of ``models.evaluation.base_digits_accuracy`` measured by the worker at the job's end
  (``test_metrics.base_test_accuracy``): for LoRA the base alone (the adapter never
  touches it), for a full fine-tune the fine-tuned network read through the base's classes;
  none for a ``pretrain`` variant;
* ``val_accuracy``: validation accuracy of the selected epoch (choose settings by this,
  never by test accuracy);
* ``train_seconds``: the job's training time (s);

and the trainable parameters (the adapter's, or every weight of the network).

Status: ``queued`` until a job runs, ``running`` while any job is unfinished, then
``succeeded`` (every planned job succeeded), ``cancelled`` (the sweep was cancelled, or a
job was and none failed) or ``failed``.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.sweep_spec import SweepCreate, variant_spec
from service.core.vocab import TERMINAL_STATUSES, JobStatus
from service.db import model_records, sweep_records
from service.db.tables import AdapterRecord, JobRecord, MetricRecord, ModelRecord, SweepRecord
from service.jobs.sweeps.plan import parse_cell
from service.jobs.sweeps.stats import summarize

FIGURES = ("test_accuracy", "base_accuracy", "val_accuracy", "train_seconds")


def interval_note(request: SweepCreate) -> str:
    """What the intervals cover: the fine-tuning seeds from one base, unless base_seeds."""
    if request.base_model_id is not None or len(request.bases()) <= 1:
        return (
            "95 % Student-t intervals over the fine-tuning seeds, all from one base: they "
            "hold the fine-tuning runs' variance, not the base's (use base_seeds for that)."
        )
    return (
        f"95 % Student-t intervals over the fine-tuning seeds and {len(request.bases())} "
        "pre-trained bases (base_seeds): they hold the base's variance too."
    )


def _status(sweep: SweepRecord, jobs: list[JobRecord]) -> JobStatus:
    statuses = [j.status for j in jobs]
    if any(s not in TERMINAL_STATUSES for s in statuses):
        return "queued" if all(s == "queued" for s in statuses) else "running"
    if sweep.cancel_requested:
        return "cancelled"
    if len(jobs) == sweep.n_jobs and all(s == "succeeded" for s in statuses):
        return "succeeded"
    return "failed" if "failed" in statuses or "cancelled" not in statuses else "cancelled"


def _planned_epochs(request: SweepCreate) -> int:
    bases = request.bases()
    n_bases = max(1, len(bases))
    total = sum(b.epochs for b in bases)
    for index, variant in enumerate(request.variants):
        runs = len(request.seeds) * (1 if variant.kind == "pretrain" else n_bases)
        total += runs * variant_spec(variant, index, request.seeds[0]).epochs
    return total


def _progress(request: SweepCreate, sweep: SweepRecord, jobs: list[JobRecord]) -> dict[str, Any]:
    done = sum(j.epochs if j.status in TERMINAL_STATUSES else j.epoch for j in jobs)
    planned = max(1, _planned_epochs(request))
    by_status: dict[str, int] = defaultdict(int)
    for j in jobs:
        by_status[j.status] += 1
    return {
        "jobs_planned": sweep.n_jobs,
        "jobs_created": len(jobs),
        "jobs": dict(by_status),
        "epochs_done": done,
        "epochs_planned": planned,
        "fraction": min(1.0, done / planned),
    }


def _job_figures(session: Session, jobs: list[JobRecord]) -> dict[str, dict[str, Any]]:
    """Per succeeded job: its figures and trainable parameters."""
    done = [j for j in jobs if j.status == "succeeded"]
    ids = [j.id for j in done]
    vals: dict[tuple[str, int], float] = {}
    if ids:
        rows = session.execute(
            select(MetricRecord.job_id, MetricRecord.epoch, MetricRecord.value).where(
                MetricRecord.job_id.in_(ids), MetricRecord.name == "val_accuracy"
            )
        )
        vals = {(r[0], r[1]): r[2] for r in rows}
    adapter_ids = [j.result_adapter_id for j in done if j.result_adapter_id]
    model_ids = [j.result_model_id for j in done if j.result_model_id]
    adapters = dict(
        session.execute(
            select(AdapterRecord.id, AdapterRecord.trainable_parameters).where(
                AdapterRecord.id.in_(adapter_ids)
            )
        ).all()
    )
    models = dict(
        session.execute(
            select(ModelRecord.id, ModelRecord.n_parameters).where(ModelRecord.id.in_(model_ids))
        ).all()
    )
    figures: dict[str, dict[str, Any]] = {}
    for j in done:
        metrics = j.test_metrics or {}
        selected = int(metrics.get("selected_epoch") or j.epoch)
        params = adapters.get(j.result_adapter_id) or models.get(j.result_model_id)
        figures[j.id] = {
            "test_accuracy": j.test_accuracy,
            "base_accuracy": metrics.get("base_test_accuracy"),
            "val_accuracy": vals.get((j.id, selected)),
            "train_seconds": metrics.get("train_seconds"),
            "trainable_parameters": params,
        }
    return figures


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: summarize([r[name] for r in rows if r.get(name) is not None]) for name in FIGURES}


def _base_parameters(session: Session, request: SweepCreate, jobs: list[JobRecord]) -> int | None:
    model_id = request.base_model_id or next(
        (j.result_model_id for j in jobs if (j.sweep_cell or "").startswith("base.")), None
    )
    model = model_records.get_model(session, model_id) if model_id else None
    return int(model.n_parameters) if model else None


def _job_line(job: JobRecord, label: str | None) -> dict[str, Any]:
    cell = parse_cell(job.sweep_cell or "")
    return {
        "id": job.id,
        "kind": job.kind,
        "variant": label,
        "seed": cell["seed"],
        "base": cell["base"],
        "status": job.status,
        "epoch": job.epoch,
        "epochs": job.epochs,
    }


def _wall_seconds(sweep: SweepRecord, jobs: list[JobRecord], status: str) -> float | None:
    if status not in TERMINAL_STATUSES:
        return None
    ends = [j.finished_at for j in jobs if j.finished_at is not None]
    if not ends:
        return None
    return (_aware(max(ends)) - _aware(sweep.created_at)).total_seconds()


def _aware(moment: datetime) -> datetime:
    from service.db.tables import as_utc

    return as_utc(moment)  # type: ignore[return-value]


def sweep_summary(session: Session, sweep: SweepRecord) -> dict[str, Any]:
    """The sweep as ``GET /sweeps/{id}`` shows it (see the module docstring)."""
    request = SweepCreate.model_validate(sweep.request)
    jobs = sweep_records.sweep_jobs(session, sweep.id)
    figures = _job_figures(session, jobs)
    labels = [v.label() for v in request.variants]
    base_params = _base_parameters(session, request, jobs)
    by_variant: dict[int, list[JobRecord]] = defaultdict(list)
    bases: list[JobRecord] = []
    for job in jobs:
        cell = parse_cell(job.sweep_cell or "")
        if cell["variant"] is None:
            bases.append(job)
        else:
            by_variant[int(cell["variant"])].append(job)
    variants = []
    for index, variant in enumerate(request.variants):
        members = by_variant[index]
        rows = [figures[j.id] for j in members if j.id in figures]
        spec = variant_spec(variant, index, request.seeds[0])
        params = next((r["trainable_parameters"] for r in rows if r["trainable_parameters"]), None)
        config = spec.model_dump(mode="json")
        config.pop("seed")
        variants.append(
            {
                "name": labels[index],
                "kind": variant.kind,
                "config": config,
                "ceiling": variant.kind == "pretrain",
                "jobs_planned": len(request.seeds)
                * (1 if variant.kind == "pretrain" else max(1, len(request.bases()))),
                "trainable_parameters": params,
                "percent_of_base": 100.0 * params / base_params
                if params and base_params and variant.kind != "pretrain"
                else None,
                **_stats(rows),
                "job_ids": [j.id for j in members],
            }
        )
    status = _status(sweep, jobs)
    return {
        "id": sweep.id,
        "status": status,
        "created_at": sweep.created_at,
        "wall_seconds": _wall_seconds(sweep, jobs, status),
        "cancel_requested": bool(sweep.cancel_requested),
        "progress": _progress(request, sweep, jobs),
        "request": sweep.request,
        "interval_note": interval_note(request),
        "base_model_ids": [request.base_model_id]
        if request.base_model_id
        else [j.result_model_id for j in bases if j.result_model_id],
        "base_parameters": base_params,
        "bases": {
            "job_ids": [j.id for j in bases],
            **_stats([figures[j.id] for j in bases if j.id in figures]),
        },
        "variants": variants,
        "jobs": [
            _job_line(
                j,
                None
                if parse_cell(j.sweep_cell or "")["variant"] is None
                else labels[int(parse_cell(j.sweep_cell or "")["variant"])],  # type: ignore[arg-type]
            )
            for j in jobs
        ],
    }


CSV_FIELDS = (
    "variant", "kind", "ceiling", "r", "lr", "trainable_parameters", "percent_of_base", "n",
    "test_accuracy_mean", "test_accuracy_std", "test_accuracy_ci_low", "test_accuracy_ci_high",
    "base_accuracy_mean", "base_accuracy_std", "base_accuracy_ci_low", "base_accuracy_ci_high",
    "val_accuracy_mean", "val_accuracy_std", "train_seconds_mean", "interval_over", "job_ids",
)  # fmt: skip


def summary_csv(summary: dict[str, Any]) -> str:
    """One CSV line per variant (the ``interval_over`` column says what the intervals
    cover: fine-tuning seeds from one base, or several bases too)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_FIELDS))
    writer.writeheader()
    over = summary["interval_note"]
    for v in summary["variants"]:
        line: dict[str, Any] = {
            "variant": v["name"],
            "kind": v["kind"],
            "ceiling": v["ceiling"],
            "r": v["config"].get("r"),
            "lr": v["config"].get("lr"),
            "trainable_parameters": v["trainable_parameters"],
            "percent_of_base": v["percent_of_base"],
            "n": v["test_accuracy"]["n"],
            "train_seconds_mean": v["train_seconds"]["mean"],
            "interval_over": over,
            "job_ids": " ".join(v["job_ids"]),
        }
        for figure in ("test_accuracy", "base_accuracy", "val_accuracy"):
            for stat in ("mean", "std", "ci_low", "ci_high"):
                key = f"{figure}_{stat}"
                if key in CSV_FIELDS:
                    line[key] = v[figure][stat]
        writer.writerow(line)
    return out.getvalue()


def get_summary(session: Session, sweep_id: str) -> dict[str, Any]:
    """:func:`sweep_summary` of sweep ``sweep_id``. Raises ApiError 404 ``sweep_not_found``."""
    return sweep_summary(session, sweep_records.require_sweep(session, sweep_id))
