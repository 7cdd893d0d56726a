"""What the ``lora-service`` client commands share: exit codes, the wrapper that turns a
handler into a command (one :class:`~service.client.Client` per run, errors on stderr), and
the rendering of tables and event lines with rich.

Exit codes: 0 done (``watch``: the job succeeded); 1 the service answered with an error or
could not be reached; 2 bad command line; 3 the job failed; 4 the job was cancelled.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.client.http import Client, ServiceError
from service.client.types import Event, Job

EXIT_OK = 0
EXIT_SERVICE_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
EXIT_JOB_CANCELLED = 4
EXIT_BY_STATUS = {"succeeded": EXIT_OK, "failed": EXIT_JOB_FAILED, "cancelled": EXIT_JOB_CANCELLED}
"""The exit code of ``jobs watch`` (and ``submit --watch``) by the job's final status."""

LEVEL_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}
STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}

Handler = Callable[[Client, argparse.Namespace, Console], int]


class UsageError(ValueError):
    """A command line the service was never asked about (exit code 2)."""


def console() -> Console:
    """A rich console on stdout; a pipe or file gets 160 columns (rich would assume 80), so
    that ids are never cut."""
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (what ``--json`` prints)."""
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def show_record(record: Any, args: argparse.Namespace, out: Console) -> int:
    """Print one record: plain JSON with ``--json``, highlighted JSON otherwise."""
    if args.json:
        print_json(record)
    else:
        out.print_json(data=record)
    return EXIT_OK


def command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Wrap ``handler(client, args, console)`` into an argparse ``func``: one client per run,
    :class:`ServiceError` and :class:`UsageError` reported on stderr with their exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            with Client(args.api_url, args.api_key) as client:
                return handler(client, args, console())
        except UsageError as exc:
            print(f"lora-service: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ServiceError as exc:
            if args.json:
                print(json.dumps(exc.envelope()), file=sys.stderr)
            else:
                param = f" (param: {exc.param})" if exc.param else ""
                status = f" [HTTP {exc.status}]" if exc.status else ""
                print(f"lora-service: {exc.code}: {exc.message}{param}{status}", file=sys.stderr)
            return EXIT_SERVICE_ERROR

    return run


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: ``-`` for None, floats to ``digits`` decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metric(name: str, value: Any) -> str:
    """A metric cell: seconds to 0.01, throughputs whole, losses and accuracies to 1e-4."""
    if name.endswith("_seconds"):
        return fmt(value, 2)
    if name.endswith("per_second"):
        return fmt(value, 0)
    return fmt(value)


def metrics_table(title: str, rows: list[dict[str, Any]], lead: tuple[str, ...]) -> Table:
    """``rows``' columns ``lead`` as they are, then every metric some row has a value for,
    in the service's order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update({k: None for k, v in row.items() if k not in lead and v is not None})
    cells = [
        (*(row.get(k, "") for k in lead), *(metric(k, row.get(k)) for k in names)) for row in rows
    ]
    return make_table(title, (*lead, *names), cells)


def time_text(stamp: str | None) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM:SS`` (UTC, as the API gives it), or ``-``."""
    return stamp[:19].replace("T", " ") if stamp else "-"


def status_text(status: str) -> str:
    """A job status in its colour (rich markup)."""
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def make_table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    """A rich table; id columns never wrap (ids are copied from it)."""
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, no_wrap=name in ("id", "model", "adapter", "base model"))
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def page_caption(page: dict[str, Any]) -> str:
    """Which items of a list page these are: ``1-50 of 120``."""
    shown = len(page["items"])
    first = page["offset"] + 1 if shown else page["offset"]
    return f"{first}-{page['offset'] + shown} of {page['total']}"


def job_result(job: Job) -> str:
    """What a job made (its model or adapter and test accuracy), or why it failed."""
    result, error = job.get("result"), job.get("error")
    if result:
        made = result.get("model_id") or result.get("adapter_id") or "-"
        return f"{made} (test acc {fmt(result.get('test_accuracy'))})"
    if error:
        return escape(f"{error['code']}: {error['message']}")
    return ""


def event_line(event: Event) -> str:
    """``HH:MM:SS  #id  type  message``, coloured by the event's level (rich markup)."""
    style = LEVEL_STYLE.get(event["level"], "")
    text = f"{time_text(event['created_at'])[11:]}  #{event['id']:<4} {event['type']:<10} "
    message = escape(event["message"] or json.dumps(event["data"]))
    return text + (f"[{style}]{message}[/{style}]" if style else message)
