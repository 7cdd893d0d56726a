"""``lora-service compare``: the full-fine-tune-versus-LoRA experiment, as one sweep.

A thin client of ``POST /sweeps`` (:mod:`service.jobs.sweeps`, run by the service): against a
running service (``API_URL``) it submits one sweep: a pre-training job on digits 0-4 (the
base), then from that base two full fine-tunes (the seed notebook's lr 1e-5, and 1e-4) and
LoRA fine-tunes at ranks 1..64 on digits 5-9, each once per seed (``--seeds``: 3 by default,
1 with ``--quick``), plus the ceiling (the same MLP pre-trained on 5-9 from random weights).
It shows a progress bar per job, and when the sweep ends prints the table (means with the
half-width of their 95 % Student-t interval) and writes ``results.json``, ``results.csv``
and ``accuracy_vs_params.png`` (the service's own ``/sweeps/{id}`` answers) to a results
directory. Seeds vary the fine-tuning runs from one base (``--base-seeds`` pre-trains
several bases, to put the base's variance in the intervals too).

``lora-service demo`` (:mod:`service.client.demo`) does the same on the embedded default
with nothing running yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
CEILING = "ceiling"

# A pipe or log file gets a table wide enough for every column (rich assumes 80 otherwise).
console = Console() if sys.stdout.isatty() else Console(width=140)


def sweep_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /sweeps`` body of the comparison ``args`` describe."""
    limit = {"max_train_samples": args.max_train_samples} if args.max_train_samples else {}
    ft = {"classes": FINETUNE_CLASSES, "epochs": args.finetune_epochs, **limit}
    variants: list[dict[str, Any]] = [
        {"kind": "finetune_full", "name": f"full lr={lr:g}", "config": {**ft, "lr": lr}}
        for lr in args.full_lrs
    ]
    for r in args.ranks:
        lrs = [args.lora_lr] if args.lora_lr is not None else [None]
        if args.tune_ranks is None or r in args.tune_ranks:
            lrs += [lr for lr in args.more_lora_lrs if lr not in lrs]
        for lr in lrs:
            fields: dict[str, Any] = {**ft, "r": r}
            if args.alpha_ratio is not None:
                fields["lora_alpha"] = args.alpha_ratio * r
            if lr is not None:
                fields["lr"] = lr
            name = f"lora r={r}" if lr is None or lr == args.lora_lr else f"lora r={r} lr={lr:g}"
            variants.append({"kind": "finetune_lora", "name": name, "config": fields})
    if args.ceiling:
        ceiling = {"classes": FINETUNE_CLASSES, "epochs": args.pretrain_epochs, **limit}
        variants.append({"kind": "pretrain", "name": CEILING, "config": ceiling})
    body: dict[str, Any] = {
        "pretrain": {"classes": PRETRAIN_CLASSES, "epochs": args.pretrain_epochs,
                     "seed": args.seed, **limit},
        "variants": variants,
        "seeds": list(range(args.seeds)),
    }  # fmt: skip
    if args.base_seeds:
        body["base_seeds"] = list(range(args.seed, args.seed + args.base_seeds))
    return body


def _label(job: dict[str, Any], many_bases: bool) -> str:
    if job["variant"] is None:
        return f"pretrain 0-4 b{job['base']}" if many_bases else "pretrain 0-4"
    where = f" b{job['base']}" if many_bases and job["base"] is not None else ""
    return f"{job['variant']} s{job['seed']}{where}"


def _last_loss(client: Client, job_id: str) -> float | None:
    series = client.jobs.metrics(job_id).get("epochs") or []
    return series[-1].get("train_loss") if series else None


def watch(client: Client, sweep_id: str, poll_seconds: float = 1.0) -> dict[str, Any]:
    """Show a progress bar per job of the sweep (epoch, last train loss, ETA; jobs appear
    as the sweep creates them) until the sweep has ended.

    Returns:
        The final ``GET /sweeps/{id}``.
    Raises:
        ServiceError: the sweep ended ``failed`` or ``cancelled``.
    """
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("epoch {task.completed:>3.0f}/{task.fields[epochs]:<3}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[status]:<9}"),
        TimeRemainingColumn(),
    )
    tasks: dict[str, Any] = {}
    seen_epoch: dict[str, int] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        while True:
            sweep = client.sweep(sweep_id)
            many_bases = len(sweep["bases"]["job_ids"]) > 1
            for job in sweep["jobs"]:
                if job["id"] not in tasks:
                    tasks[job["id"]] = progress.add_task(
                        _label(job, many_bases), total=job["epochs"] or None, loss="  -   ",
                        status=job["status"], epochs=job["epochs"],
                    )  # fmt: skip
                update: dict[str, Any] = {"status": job["status"], "completed": job["epoch"]}
                if job["epoch"] and seen_epoch.get(job["id"]) != job["epoch"]:
                    seen_epoch[job["id"]] = job["epoch"]
                    loss = _last_loss(client, job["id"])
                    update["loss"] = f"{loss:.4f}" if loss is not None else "  -   "
                progress.update(tasks[job["id"]], **update)
            if sweep["status"] in TERMINAL_STATUSES:
                break
            time.sleep(poll_seconds)
    if sweep["status"] != "succeeded":
        bad = [
            f"{_label(j, many_bases)}: {j['status']}"
            for j in sweep["jobs"]
            if j["status"] != "succeeded"
        ]
        raise ServiceError(f"sweep {sweep_id} {sweep['status']}: " + "; ".join(bad))
    return sweep


def _half(stats: dict[str, Any]) -> float | None:
    if stats["ci_low"] is None:
        return None
    return (stats["ci_high"] - stats["ci_low"]) / 2


def rows_of(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat line per variant: method, rank, lr, n, parameters and each mean with the
    half-width of its 95 % interval (``None`` with a single seed)."""
    rows = []
    for v in sweep["variants"]:
        method = {"finetune_full": "full", "finetune_lora": "lora", "pretrain": CEILING}[v["kind"]]
        rows.append(
            {
                "name": v["name"],
                "method": method,
                "rank": v["config"].get("r"),
                "learning_rate": v["config"]["lr"],
                "n": v["test_accuracy"]["n"],
                "trainable_parameters": v["trainable_parameters"],
                "trainable_percent": v["percent_of_base"],
                "test_accuracy_5_9": v["test_accuracy"]["mean"],
                "test_accuracy_5_9_ci": _half(v["test_accuracy"]),
                "served_accuracy_0_4": v["base_accuracy"]["mean"],
                "served_accuracy_0_4_ci": _half(v["base_accuracy"]),
                "val_accuracy": v["val_accuracy"]["mean"],
                "train_seconds": v["train_seconds"]["mean"],
                "job_ids": v["job_ids"],
            }
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(sweep: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Print the comparison as a rich table (means, ± the 95 % interval's half-width)."""
    bases = sweep["bases"]
    console.print(
        f"pre-trained base(s) {', '.join(sweep['base_model_ids'])}: "
        f"{sweep['base_parameters'] or 0:,} parameters, test accuracy on 0-4 "
        f"{_fmt(bases['test_accuracy']['mean'], '.4f')}, "
        f"{_fmt(bases['train_seconds']['mean'], '.0f')} s"
    )
    table = Table(title="Full fine-tuning vs LoRA on digits 5-9", caption=sweep["interval_note"])
    headers = ("method", "rank", "lr", "n", "trainable params", "% of base", "acc 5-9", "±",
               "acc 0-4 as served", "±", "val acc", "train s")  # fmt: skip
    for col in headers:
        table.add_column(col, justify="right")
    full = [r for r in rows if r["method"] == "full" and r["val_accuracy"] is not None]
    best_full = max(full, key=lambda r: r["val_accuracy"])["name"] if len(full) > 1 else None
    for r in rows:
        method = r["method"] + (" *" if r["name"] == best_full else "")
        table.add_row(
            method,
            str(r["rank"] or "-"),
            f"{r['learning_rate']:g}",
            str(r["n"]),
            _fmt(r["trainable_parameters"], ","),
            _fmt(r["trainable_percent"], ".2f"),
            _fmt(r["test_accuracy_5_9"], ".4f"),
            _fmt(r["test_accuracy_5_9_ci"], ".4f"),
            _fmt(r["served_accuracy_0_4"], ".4f"),
            _fmt(r["served_accuracy_0_4_ci"], ".4f"),
            _fmt(r["val_accuracy"], ".4f"),
            _fmt(r["train_seconds"], ".0f"),
        )
    console.print(table)
    if best_full:
        console.print(f"* full fine-tuning's lr chosen by validation accuracy: {best_full}")


def write_results(
    client: Client, directory: Path, sweep: dict[str, Any], rows: list[dict], args: Any
) -> None:
    """Write results.json (the sweep and the flat rows), results.csv and
    accuracy_vs_params.png (both as the service renders them) to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "created_at": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "pretrain_epochs": args.pretrain_epochs,
        "finetune_epochs": args.finetune_epochs,
        "seeds": args.seeds,
        "sweep_id": sweep["id"],
        "rows": rows,
        "sweep": sweep,
    }
    (directory / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    (directory / "results.csv").write_text(client.sweep_csv(sweep["id"]))
    (directory / "accuracy_vs_params.png").write_bytes(client.sweep_plot(sweep["id"], "png"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``compare`` options (shared with ``demo``)."""
    p.add_argument("--quick", action="store_true", help="fewer epochs, one seed: about a minute")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default 30 (quick: 3)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default 10 (quick: 2)")
    p.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds: 3 (quick: 1)")
    p.add_argument(
        "--base-seeds", type=int, default=None, help="pre-train this many bases (default 1)"
    )
    p.add_argument("--ranks", type=int, nargs="+", default=list(DEFAULT_RANKS))
    p.add_argument("--full-lrs", type=float, nargs="+", default=list(FULL_LRS))
    p.add_argument(
        "--alpha-ratio", type=float, default=None, help="lora_alpha = ratio * r (service: 2)"
    )
    p.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (service: 1e-3)")
    p.add_argument(
        "--more-lora-lrs", type=float, nargs="+", default=[],
        help="tuning: also run LoRA at these learning rates (at --tune-ranks)",
    )  # fmt: skip
    p.add_argument(
        "--tune-ranks", type=int, nargs="+", default=None,
        help="ranks that get --more-lora-lrs (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--ceiling", action=argparse.BooleanOptionalAction, default=None,
        help="the ceiling row: the MLP pre-trained on 5-9 (default: on; off with --quick)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the (first) base")
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
    if args.ceiling is None:
        args.ceiling = not args.quick
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
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
        sweep = client.submit_sweep(sweep_body(args))
        console.print(f"sweep {sweep['id']} submitted ({sweep['progress']['jobs_planned']} jobs)")
        sweep = watch(client, sweep["id"])
    except ServiceError as exc:
        console.print(f"[red]comparison failed:[/red] {exc}")
        return 1
    rows = rows_of(sweep)
    print_table(sweep, rows)
    write_results(client, args.results_dir, sweep, rows, args)
    console.print(
        f"results in {args.results_dir}/ (results.json, results.csv, accuracy_vs_params.png); "
        f"wall time {time.monotonic() - started:.0f} s"
    )
    return 0
