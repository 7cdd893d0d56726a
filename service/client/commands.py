"""``lora-service jobs | models | adapters | predict``: the API from the shell, on
:class:`service.client.Client`.

::

    lora-service jobs submit pretrain --set epochs=3            # prints the queued job
    lora-service jobs submit finetune_lora --base-model mdl_... --set r=4 --watch
    lora-service jobs list --status running
    lora-service jobs show JOB_ID | cancel JOB_ID | watch JOB_ID
    lora-service predict docs/examples/seven.png --model mdl_... --adapter adp_...
    lora-service adapters list | import --base-model M FILES... | download ID | delete ID

Every command takes ``--api-url`` (default: the ``API_URL`` setting), ``--api-key``
(default: ``API_KEY``; the environment keeps it out of the process list) and ``--json``
(the API's JSON on stdout instead of tables; ``watch`` prints one event per line).
Errors go to stderr as ``lora-service: <code>: <message>`` (with ``--json``: the error
envelope plus its HTTP status).

Exit codes: 0 done (``watch``: the job succeeded); 1 the service answered with an error or
could not be reached; 2 bad command line; 3 the job failed; 4 the job was cancelled.

This module builds the parser; the commands are in :mod:`service.client.job_commands` and
:mod:`service.client.model_commands`, what they share in :mod:`service.client.output`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from service.client import job_commands as jc
from service.client import model_commands as mc
from service.core.vocab import JOB_KINDS, MODEL_KINDS, TERMINAL_STATUSES, UNFINISHED_STATUSES


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", default=None, help="service URL (default: API_URL setting)")
    common.add_argument(
        "--api-key",
        default=None,
        help="bearer key (default: API_KEY setting; prefer the environment, which keeps it "
        "out of the process list)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    return common


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=None, help="items per page (service: 50)")
    p.add_argument("--offset", type=int, default=None, help="items to skip")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``jobs``, ``models``, ``adapters`` and ``predict`` on ``lora-service``'s
    subcommand parser ``sub``."""
    common = _common()

    def leaf(group: argparse._SubParsersAction, name: str, func: Callable, text: str):  # noqa: ANN202
        parser = group.add_parser(name, parents=[common], help=text, description=text)
        parser.set_defaults(func=func)
        return parser

    jobs = sub.add_parser("jobs", help="submit, list, show, cancel and watch training jobs")
    jg = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    p = leaf(jg, "submit", jc.jobs_submit, "queue a training job")
    p.add_argument("kind", choices=JOB_KINDS)
    p.add_argument("--base-model", help="model to fine-tune (fine-tunes)")
    p.add_argument("--config", help="the config as JSON, or @file.json")
    p.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="one config field (repeatable; JSON values: 3, 1e-4, true, [5,6]; a.b=1 nests)",
    )
    p.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    p.add_argument("--webhook-url", help="POSTed the job's terminal status")
    p.add_argument("--watch", action="store_true", help="then follow it as `jobs watch` does")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the job id")
    p = leaf(jg, "list", jc.jobs_list, "list jobs, newest first")
    p.add_argument("--status", choices=(*UNFINISHED_STATUSES, *TERMINAL_STATUSES))
    p.add_argument("--kind", choices=JOB_KINDS)
    _paging(p)
    leaf(jg, "show", jc.jobs_show, "a job and its per-epoch metrics").add_argument("job_id")
    leaf(jg, "cancel", jc.jobs_cancel, "cancel a queued or running job").add_argument("job_id")
    p = leaf(
        jg,
        "watch",
        jc.jobs_watch,
        "follow a job's live events with a progress bar; exit 0 succeeded, 3 failed, 4 cancelled",
    )
    p.add_argument("job_id")
    p.add_argument("--after", type=int, default=None, help="only events after this id")
    p = leaf(jg, "events", jc.jobs_events, "one page of a job's event log")
    p.add_argument("job_id")
    p.add_argument("--after", type=int, default=None, help="events after this id")
    p.add_argument("--limit", type=int, default=None, help="events per page")
    leaf(jg, "checkpoints", jc.jobs_checkpoints, "a job's kept epochs").add_argument("job_id")
    p = leaf(jg, "publish", jc.jobs_publish, "register a kept epoch as a model or adapter")
    p.add_argument("job_id")
    p.add_argument("epoch", type=int)

    models = sub.add_parser("models", help="list and show registered models")
    mg = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    p = leaf(mg, "list", mc.models_list, "list models, newest first")
    p.add_argument("--kind", choices=MODEL_KINDS)
    _paging(p)
    leaf(mg, "show", mc.models_show, "one model").add_argument("model_id")

    adapters = sub.add_parser("adapters", help="list, import, download and delete LoRA adapters")
    ag = adapters.add_subparsers(dest="adapters_command", required=True, metavar="COMMAND")
    p = leaf(ag, "list", mc.adapters_list, "list adapters, newest first")
    p.add_argument("--base-model", help="only adapters of this model")
    _paging(p)
    leaf(ag, "show", mc.adapters_show, "one adapter").add_argument("adapter_id")
    p = leaf(ag, "import", mc.adapters_import, "register a PEFT adapter trained elsewhere")
    p.add_argument("files", nargs="+", metavar="FILE", help="the PEFT files, or one .zip")
    p.add_argument("--base-model", required=True, help="the model it was trained on")
    p.add_argument("--classes", help="digit of each head output, e.g. 5,6,7,8,9")
    p = leaf(ag, "download", mc.adapters_download, "save an adapter's PEFT files as a zip")
    p.add_argument("adapter_id")
    p.add_argument(
        "-o", "--output", help="file, or directory (existing, or ending in /); default: ./"
    )
    leaf(ag, "delete", mc.adapters_delete, "delete an adapter").add_argument("adapter_id")

    p = leaf(sub, "predict", mc.predict, "the digit in each image")
    p.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, GIF, BMP or WebP")
    p.add_argument("--model", help="base model (default: the newest pre-trained one)")
    p.add_argument("--adapter", help="LoRA adapter of that model")
