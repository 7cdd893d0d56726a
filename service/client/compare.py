"""``lora-service compare``: the full-fine-tune-versus-LoRA experiment, through the REST API.

Against a running service (``API_URL``) it submits a pre-training job on digits 0-4, then from
that base two full fine-tunes (the seed notebook's lr 1e-5, and 1e-4) and LoRA fine-tunes at
ranks 1..64 on digits 5-9, shows a progress bar per job, and when all finish prints a table
and writes ``results.json``, ``results.csv`` and ``accuracy_vs_params.png`` to a results
directory. ``--quick`` runs the same comparison with fewer epochs.

``lora-service demo`` (:mod:`service.client.demo`) does the same on the embedded default
with nothing running yet.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from service.client.http import Client, ServiceError
from service.core.settings import get_settings
from service.core.vocab import TERMINAL_STATUSES

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)
FULL_LRS = (1e-5, 1e-4)
PRETRAIN_CLASSES = [0, 1, 2, 3, 4]
FINETUNE_CLASSES = [5, 6, 7, 8, 9]

# A pipe or log file gets a table wide enough for every column (rich assumes 80 otherwise).
console = Console() if sys.stdout.isatty() else Console(width=120)


@dataclass
class Row:
    """One line of the comparison table (accuracies are fractions in [0, 1])."""

    method: str
    rank: int | None
    learning_rate: float
    trainable_parameters: int
    trainable_percent: float
    test_accuracy_5_9: float
    served_accuracy_0_4: float
    train_seconds: float
    job_id: str
    model_id: str | None
    adapter_id: str | None


def _last_loss(client: Client, job_id: str) -> float | None:
    series = client.metrics(job_id).get("epochs") or []
    return series[-1].get("train_loss") if series else None


def watch(client: Client, jobs: dict[str, str], poll_seconds: float = 1.0) -> dict[str, dict]:
    """Show a progress bar per job (epoch, last train loss, ETA) until all are terminal.

    Args:
        jobs: label -> job id.
    Returns:
        label -> final job JSON.
    Raises:
        ServiceError: a job ended ``failed`` or ``cancelled``.
    """
    final: dict[str, dict] = {}
    seen_epoch: dict[str, int] = {}
    columns = (
        TextColumn("{task.description:<18}"),
        BarColumn(),
        TextColumn("epoch {task.completed:>3.0f}/{task.fields[epochs]:<3}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[status]:<9}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {
            label: progress.add_task(label, total=None, loss="  -   ", status="queued", epochs="?")
            for label in jobs
        }
        while len(final) < len(jobs):
            for label, job_id in jobs.items():
                if label in final:
                    continue
                job = client.job(job_id)
                prog = job.get("progress") or {}
                epoch, epochs = int(prog.get("epoch") or 0), int(prog.get("epochs") or 0)
                update: dict[str, Any] = {"status": job["status"], "completed": epoch}
                if epochs:
                    update["total"] = epochs
                    update["epochs"] = epochs
                if epoch and seen_epoch.get(label) != epoch:
                    seen_epoch[label] = epoch
                    loss = _last_loss(client, job_id)
                    update["loss"] = f"{loss:.4f}" if loss is not None else "  -   "
                progress.update(tasks[label], **update)
                if job["status"] in TERMINAL_STATUSES:
                    final[label] = job
            if len(final) < len(jobs):
                time.sleep(poll_seconds)
    bad = {k: v for k, v in final.items() if v["status"] != "succeeded"}
    if bad:
        msgs = "; ".join(f"{k}: {v['status']} {v.get('error')}" for k, v in bad.items())
        raise ServiceError(f"jobs did not succeed: {msgs}")
    return final


def _seconds(job: dict) -> float:
    start, end = job.get("started_at"), job.get("finished_at")
    if not start or not end:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


Variant = tuple[str, int | None, float]  # (method, rank, learning rate)


def _submit_finetunes(
    client: Client, args: argparse.Namespace, base_id: str, limit: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Variant]]:
    """Submit the full fine-tunes and the LoRA fine-tunes; returns label -> job id and
    label -> variant."""
    jobs: dict[str, str] = {}
    variants: dict[str, Variant] = {}
    ft = {"classes": FINETUNE_CLASSES, "epochs": args.finetune_epochs, "seed": args.seed, **limit}
    for lr in FULL_LRS:
        label = f"full lr={lr:g}"
        jobs[label] = client.submit("finetune_full", {**ft, "lr": lr}, base_id)["id"]
        variants[label] = ("full", None, lr)
    for r in args.ranks:
        label = f"lora r={r}"
        overrides = {
            "lora_alpha": None if args.alpha_ratio is None else args.alpha_ratio * r,
            "lr": args.lora_lr,
        }
        spec = {**ft, "r": r, **{k: v for k, v in overrides.items() if v is not None}}
        job = client.submit("finetune_lora", spec, base_id)
        jobs[label] = job["id"]
        variants[label] = ("lora", r, job["config"]["lr"])
    return jobs, variants


def _row(client: Client, variant: Variant, job: dict, base: dict) -> Row:
    """One table line: the job's result, its trainable parameters and 0-4 as served."""
    method, rank, lr = variant
    result, base_classes = job["result"], list(base["classes"])
    base_params = int(base["n_parameters"])
    if method == "full":
        model_id, adapter_id = result["model_id"], None
        trainable = base_params
        # The fine-tuned weights read through the base's 0-4 head: what full fine-tuning
        # left of the old task (the seed notebook's measure of forgetting).
        served = client.evaluate(model_id=model_id, test_digits=base_classes, classes=base_classes)
    else:
        model_id, adapter_id = base["id"], result["adapter_id"]
        trainable = int(client.get(f"/adapters/{adapter_id}")["trainable_parameters"])
        # The base as served with no adapter: LoRA never touched it.
        served = client.evaluate(model_id=base["id"], test_digits=base_classes)
    return Row(
        method=method,
        rank=rank,
        learning_rate=lr,
        trainable_parameters=trainable,
        trainable_percent=100.0 * trainable / base_params,
        test_accuracy_5_9=float(result["test_accuracy"]),
        served_accuracy_0_4=float(served["accuracy"]),
        train_seconds=_seconds(job),
        job_id=job["id"],
        model_id=model_id,
        adapter_id=adapter_id,
    )


def run_comparison(client: Client, args: argparse.Namespace) -> tuple[dict, list[Row]]:
    """Submit every job, wait, evaluate, and return (pretrain summary, table rows)."""
    limit = {"max_train_samples": args.max_train_samples} if args.max_train_samples else {}
    pre_cfg = {"classes": PRETRAIN_CLASSES, "epochs": args.pretrain_epochs, "seed": args.seed}
    pre = client.submit("pretrain", {**pre_cfg, **limit})
    console.print(f"pretrain job {pre['id']} submitted")
    pre_final = watch(client, {"pretrain 0-4": pre["id"]})["pretrain 0-4"]
    base = client.get(f"/models/{pre_final['result']['model_id']}")
    jobs, variants = _submit_finetunes(client, args, base["id"], limit)
    finals = watch(client, jobs)
    rows = [_row(client, variants[label], job, base) for label, job in finals.items()]
    pretrain = {
        "job_id": pre_final["id"],
        "model_id": base["id"],
        "parameters": int(base["n_parameters"]),
        "test_accuracy_0_4": float(pre_final["result"]["test_accuracy"]),
        "train_seconds": _seconds(pre_final),
    }
    return pretrain, rows


def print_table(pretrain: dict, rows: list[Row]) -> None:
    """Print the comparison as a rich table."""
    console.print(
        f"pre-trained base {pretrain['model_id']}: {pretrain['parameters']:,} parameters, "
        f"test accuracy on 0-4 {pretrain['test_accuracy_0_4']:.4f}, "
        f"{pretrain['train_seconds']:.0f} s"
    )
    table = Table(title="Full fine-tuning vs LoRA on digits 5-9")
    for col in (
        "method",
        "rank",
        "lr",
        "trainable params",
        "% of base",
        "acc 5-9",
        "acc 0-4 as served",
        "train s",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.method,
            str(r.rank or "-"),
            f"{r.learning_rate:g}",
            f"{r.trainable_parameters:,}",
            f"{r.trainable_percent:.2f}",
            f"{r.test_accuracy_5_9:.4f}",
            f"{r.served_accuracy_0_4:.4f}",
            f"{r.train_seconds:.0f}",
        )
    console.print(table)


def write_results(
    directory: Path, pretrain: dict, rows: list[Row], args: argparse.Namespace
) -> None:
    """Write results.json, results.csv and accuracy_vs_params.png (log-scale x) to ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "created_at": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "pretrain_epochs": args.pretrain_epochs,
        "finetune_epochs": args.finetune_epochs,
        "pretrain": pretrain,
        "rows": [asdict(r) for r in rows],
    }
    (directory / "results.json").write_text(json.dumps(payload, indent=2))
    with (directory / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lora = [r for r in rows if r.method == "lora"]
    ax.plot(
        [r.trainable_parameters for r in lora],
        [r.test_accuracy_5_9 for r in lora],
        "o-",
        label="LoRA (r = 1..64)",
    )
    for r in lora:
        ax.annotate(
            f"r={r.rank}",
            (r.trainable_parameters, r.test_accuracy_5_9),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    for r in rows:
        if r.method == "full":
            ax.plot(
                r.trainable_parameters,
                r.test_accuracy_5_9,
                "s",
                label=f"full fine-tune, lr {r.learning_rate:g}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy on digits 5-9")
    ax.set_title("MNIST 0-4 -> 5-9: accuracy vs trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(directory / "accuracy_vs_params.png", dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``compare`` options (shared with ``demo``)."""
    p.add_argument("--quick", action="store_true", help="fewer epochs: a few minutes in all")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default 30 (quick: 3)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default 10 (quick: 2)")
    p.add_argument("--ranks", type=int, nargs="+", default=list(DEFAULT_RANKS))
    p.add_argument(
        "--alpha-ratio", type=float, default=None, help="lora_alpha = ratio * r (service: 2)"
    )
    p.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (service: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-train-samples", type=int, default=None, help="cap each train split (smoke runs)"
    )
    p.add_argument(
        "--results-dir", type=Path, default=None, help="default results/compare-<UTC time>"
    )
    p.add_argument("--url", default=None, help="service URL (default: API_URL setting)")


def _fill_defaults(args: argparse.Namespace) -> None:
    if args.pretrain_epochs is None:
        args.pretrain_epochs = 3 if args.quick else 30
    if args.finetune_epochs is None:
        args.finetune_epochs = 2 if args.quick else 10
    if args.results_dir is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        args.results_dir = Path("results") / f"compare-{stamp}"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``lora-service compare``; returns the process exit code."""
    _fill_defaults(args)
    settings = get_settings()
    client = Client(args.url or settings.api_url, settings.api_key)
    client.wait_healthy(30)
    started = time.monotonic()
    try:
        pretrain, rows = run_comparison(client, args)
    except ServiceError as exc:
        console.print(f"[red]comparison failed:[/red] {exc}")
        return 1
    print_table(pretrain, rows)
    write_results(args.results_dir, pretrain, rows, args)
    console.print(
        f"results in {args.results_dir}/ (results.json, results.csv, accuracy_vs_params.png); "
        f"wall time {time.monotonic() - started:.0f} s"
    )
    return 0
