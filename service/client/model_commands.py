"""``lora-service models | adapters | predict``: what the jobs produced, and digits from
image files with it (see :mod:`service.client.commands`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from service.client.http import Client
from service.client.output import (
    EXIT_OK,
    UsageError,
    command,
    fmt,
    make_table,
    page_caption,
    print_json,
    show_record,
    time_text,
)


@command
def models_list(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``models list``: a table of registered models, newest first."""
    page = client.models.list(kind=args.kind, limit=args.limit, offset=args.offset)
    if args.json:
        print_json(page)
        return EXIT_OK
    rows = [
        (m["id"], m["kind"], ",".join(map(str, m["classes"])), f"{m['n_parameters']:,}",
         fmt(m["test_accuracy"]), m.get("parent_id") or "-", time_text(m["created_at"]))
        for m in page["items"]
    ]  # fmt: skip
    columns = ("id", "kind", "classes", "parameters", "test acc", "parent", "created (UTC)")
    out.print(make_table(f"models {page_caption(page)}", columns, rows))
    return EXIT_OK


@command
def models_show(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``models show MODEL_ID``."""
    return show_record(client.models.get(args.model_id), args, out)


@command
def adapters_list(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``adapters list``: a table of registered adapters, newest first."""
    page = client.adapters.list(base_model_id=args.base_model, limit=args.limit, offset=args.offset)
    if args.json:
        print_json(page)
        return EXIT_OK
    rows = [
        (a["id"], a["base_model_id"], a["source"], a["r"], fmt(a["lora_alpha"], 1),
         f"{a['trainable_parameters']:,}", ",".join(map(str, a["classes"])),
         fmt(a["test_accuracy"]), time_text(a["created_at"]))
        for a in page["items"]
    ]  # fmt: skip
    columns = ("id", "base model", "source", "r", "lora_alpha", "trainable", "classes",
               "test acc", "created (UTC)")  # fmt: skip
    out.print(make_table(f"adapters {page_caption(page)}", columns, rows))
    return EXIT_OK


@command
def adapters_show(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``adapters show ADAPTER_ID``."""
    return show_record(client.adapters.get(args.adapter_id), args, out)


@command
def adapters_import(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``adapters import --base-model M FILE...``: register PEFT files (or their zip)."""
    classes = None
    if args.classes:
        try:
            classes = [int(c) for c in args.classes.split(",")]
        except ValueError:
            raise UsageError(
                f"--classes {args.classes!r}: expected digits like 5,6,7,8,9"
            ) from None
    try:
        adapter = client.adapters.import_(args.base_model, [Path(f) for f in args.files], classes)
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    if args.json:
        print_json(adapter)
    else:
        out.print(
            f"adapter [bold]{adapter['id']}[/bold] imported: r={adapter['r']}, "
            f"lora_alpha={adapter['lora_alpha']:g}, base {adapter['base_model_id']}"
        )
    return EXIT_OK


@command
def adapters_download(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``adapters download ADAPTER_ID [-o PATH]``: the PEFT directory as a zip."""
    path = client.adapters.download(args.adapter_id, args.output or Path.cwd())
    if args.json:
        print_json({"id": args.adapter_id, "path": str(path), "bytes": path.stat().st_size})
    else:
        out.print(f"adapter {args.adapter_id} saved to {path} ({path.stat().st_size:,} bytes)")
    return EXIT_OK


@command
def adapters_delete(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``adapters delete ADAPTER_ID``: its record and files."""
    client.adapters.delete(args.adapter_id)
    if args.json:
        print_json({"id": args.adapter_id, "deleted": True})
    else:
        out.print(f"adapter {args.adapter_id} deleted")
    return EXIT_OK


@command
def predict(client: Client, args: argparse.Namespace, out: Console) -> int:
    """``predict FILE...``: the digit of each image."""
    try:
        answers = client.predict(
            [Path(f) for f in args.files], model_id=args.model, adapter_id=args.adapter
        )
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    rows = [{"file": f, **p} for f, p in zip(args.files, answers, strict=True)]
    if args.json:
        print_json(rows)
        return EXIT_OK
    table_rows = [
        (escape(r["file"]), r["digit"], fmt(r["probabilities"][str(r["digit"])]), r["model_id"],
         r["adapter_id"] or "-")
        for r in rows
    ]  # fmt: skip
    out.print(make_table(None, ("file", "digit", "probability", "model", "adapter"), table_rows))
    return EXIT_OK
