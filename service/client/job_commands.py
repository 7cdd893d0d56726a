"""``lora-service jobs submit | list | show | cancel | watch | events | checkpoints |
publish``: training jobs from the shell (see :mod:`service.client.commands`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from service.client.http import Client
from service.client.output import (
    EXIT_BY_STATUS,
    EXIT_OK,
    EXIT_SERVICE_ERROR,
    UsageError,
    command,
    event_line,
    fmt,
    job_result,
    make_table,
    metrics_table,
    page_caption,
    print_json,
    status_text,
    time_text,
)
from service.core.vocab import TERMINAL_STATUSES


def parse_value(raw: str) -> Any:
    """A ``--set`` value: JSON when it parses (``3``, ``1e-4``, ``true``, ``[5,6]``,
    ``null``); else a comma list (``5,6,7``, ``fc1,fc2``) as a list of such values; else
    the text itself (``cosine``)."""

    def one(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text

    value = one(raw)
    if isinstance(value, str) and "," in raw:
        return [one(part.strip()) for part in raw.split(",")]
    return value


def build_config(config: str | None, sets: Iterable[str]) -> dict[str, Any]:
    """The job config from ``--config`` (JSON text, or ``@file``) and ``--set key=value``
    items on top (a dotted key sets a nested field: ``early_stopping.patience=3``).

    Raises:
        UsageError: unreadable or non-object ``--config``, a ``--set`` without ``=``.
    """
    result: dict[str, Any] = {}
    if config:
        try:
            text = Path(config[1:]).read_text() if config.startswith("@") else config
            result = json.loads(text)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--config: not a JSON object ({exc})") from None
        if not isinstance(result, dict):
            raise UsageError("--config: not a JSON object")
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected field=value")
        *parents, leaf = key.strip().split(".")
        node = result
        for name in parents:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise UsageError(f"--set {item!r}: {name} is not an object")
            node = child
        node[leaf] = parse_value(raw)
    return result


@command
def jobs_submit(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``jobs submit KIND``: queue a job; with ``--watch`` follow it to its end."""
    config = build_config(args.config, args.set or [])
    job = client.jobs.submit(
        args.kind,
        config,
        base_model_id=args.base_model,
        idempotency_key=args.idempotency_key,
        webhook_url=args.webhook_url,
    )
    if args.quiet:
        print(job["id"])
    elif args.json and not args.watch:
        print_json(job)
    elif not args.json:
        out.print(f"job [bold]{job['id']}[/bold] ({job['kind']}) {status_text(job['status'])}")
    return _follow(client, job["id"], None, args.json, out) if args.watch else EXIT_OK


@command
def jobs_list(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``jobs list``: a table of jobs, newest first."""
    page = client.jobs.list(
        status=args.status, kind=args.kind, limit=args.limit, offset=args.offset
    )
    if args.json:
        print_json(page)
        return EXIT_OK
    rows = [
        (
            j["id"],
            j["kind"],
            status_text(j["status"]),
            f"{j['progress']['epoch']}/{j['progress']['epochs']}",
            time_text(j["created_at"]),
            job_result(j),
        )
        for j in page["items"]
    ]
    columns = ("id", "kind", "status", "epochs", "created (UTC)", "result")
    out.print(make_table(f"jobs {page_caption(page)}", columns, rows))
    return EXIT_OK


@command
def jobs_show(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``jobs show JOB_ID``: the job, then its per-epoch metrics."""
    job = client.jobs.get(args.job_id)
    if args.json:
        print_json(job)
        return EXIT_OK
    progress = job["progress"]
    status = status_text(job["status"])
    if job["cancel_requested"] and job["status"] not in TERMINAL_STATUSES:
        status += " (cancel requested)"
    fields = [
        ("id", job["id"]),
        ("kind", job["kind"]),
        ("status", status),
        ("base model", job.get("base_model_id") or "-"),
        ("progress", f"{progress['epoch']}/{progress['epochs']} epochs"),
        ("eta", f"{progress['eta_seconds']:.0f} s" if progress.get("eta_seconds") else "-"),
        ("attempt", job["attempt"]),
        ("created", time_text(job["created_at"])),
        ("started", time_text(job.get("started_at"))),
        ("finished", time_text(job.get("finished_at"))),
        ("result", job_result(job) or "-"),
        ("config", json.dumps(job["config"], separators=(",", ":"))),
    ]
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(name, str(value))
    out.print(table)
    epochs = client.jobs.metrics(args.job_id)["epochs"]
    if epochs:
        out.print(metrics_table("metrics per epoch", list(epochs), ("epoch",)))
    return EXIT_OK


@command
def jobs_cancel(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``jobs cancel JOB_ID``: cancelled at once if queued, at its next step if running."""
    job = client.jobs.cancel(args.job_id)
    if args.json:
        print_json(job)
    elif job["status"] == "cancelled":
        out.print(f"job {job['id']} {status_text('cancelled')}")
    else:
        out.print(f"job {job['id']}: cancel requested; it stops at its next training step")
    return EXIT_OK


@command
def jobs_watch(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``jobs watch JOB_ID``: follow the live event stream; exit code by the final status."""
    return _follow(client, args.job_id, args.after, args.json, out)


def _follow(client: Client, job_id: str, after: int | None, as_json: bool, out: Console) -> int:
    """Print the job's events as they come (a progress bar below them unless ``as_json``)
    until its terminal event; returns :data:`EXIT_BY_STATUS` of the final status."""
    job = client.jobs.get(job_id)
    status = job["status"]
    if as_json:
        for event in client.jobs.stream_events(job_id, after=after):
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            status = event["data"].get("status", status) if event["type"] == "status" else status
    else:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("val_loss {task.fields[val_loss]}"),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=out) as bar:
            progress = job["progress"]
            task = bar.add_task(
                job_id,
                total=progress["epochs"] or None,
                completed=progress["epoch"],
                status=status_text(status),
                val_loss="-",
            )
            for event in client.jobs.stream_events(job_id, after=after):
                bar.console.print(event_line(event))
                data = event["data"]
                if event["type"] == "status" and "status" in data:
                    status = data["status"]
                    bar.update(task, status=status_text(status))
                elif event["type"] == "metrics" and "epoch" in data:
                    bar.update(task, completed=data["epoch"], val_loss=fmt(data.get("val_loss")))
    if status not in TERMINAL_STATUSES:  # the stream had ended before ``after``
        status = client.jobs.get(job_id)["status"]
    if not as_json:
        out.print(f"job {job_id} {status_text(status)}")
    return EXIT_BY_STATUS.get(status, EXIT_SERVICE_ERROR)


@command
def jobs_events(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``jobs events JOB_ID``: one page of the job's event log."""
    page = client.jobs.events(args.job_id, after=args.after, limit=args.limit)
    if args.json:
        print_json(page)
        return EXIT_OK
    for event in page["items"]:
        out.print(event_line(event))
    if page["has_more"]:
        out.print(f"more: --after {page['next_after']}")
    return EXIT_OK


@command
def jobs_checkpoints(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``jobs checkpoints JOB_ID``: the kept epochs and their metrics."""
    items = client.jobs.checkpoints(args.job_id)
    if args.json:
        print_json({"items": items})
        return EXIT_OK
    rows = [
        {
            "epoch": c["epoch"],
            "selected": "yes" if c.get("selected") else "",
            "published": c.get("published_id") or "",
            **c.get("metrics", {}),
        }
        for c in items
    ]
    lead = ("epoch", "selected", "published")
    out.print(metrics_table(f"checkpoints of {args.job_id}", rows, lead))
    return EXIT_OK


@command
def jobs_publish(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``jobs publish JOB_ID EPOCH``: register a kept epoch as a model or adapter."""
    record = client.jobs.publish_checkpoint(args.job_id, args.epoch)
    if args.json:
        print_json(record)
    else:
        out.print(f"epoch {args.epoch} of {args.job_id} published as [bold]{record['id']}[/bold]")
    return EXIT_OK
