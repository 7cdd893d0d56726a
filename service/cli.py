"""``lora-service``: one command for every process of the service.

    lora-service migrate      bring the database to the Alembic head
    lora-service api          the REST API (uvicorn on HOST:PORT)
    lora-service worker       one Celery training worker (solo pool, TRAINING_QUEUE)
    lora-service worker-health  exit 0 when the worker's heartbeat file is fresh (liveness)
    lora-service dev          migrate, then API + one worker together; Ctrl-C stops both
    lora-service compare      full fine-tune vs LoRA through the API (service/client/compare.py)
    lora-service demo         the embedded stack up, ``compare`` on it, the stack down
    lora-service jobs         submit | list | show | cancel | watch | events | checkpoints | publish
    lora-service models       list | show
    lora-service adapters     list | show | import | download | delete
    lora-service predict      the digit in image files (service/client/commands.py: all four)

Every setting comes from the environment (see ``service/core/settings.py``). This module
sits above every package: it starts processes and may import any of them. ``api`` and
``worker`` refuse an unmigrated database with a message that says what to run, unless
``AUTO_MIGRATE=true``. The same commands run in docker-compose.yml, the Procfile and the
end-to-end tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence

from service.client import commands, compare, demo
from service.core.logs import configure_logging
from service.core.settings import Settings, get_settings

EXIT_NOT_MIGRATED = 2
DEV_PROCESSES = ("api", "worker")
PROCESS_COMMANDS: dict[str, list[str]] = {
    "migrate": ["lora-service", "migrate"],
    "api": ["lora-service", "api"],
    "worker": ["lora-service", "worker"],
}
"""The command of each process: docker-compose.yml, the Procfile and the e2e tests run these."""


def _fail(message: str) -> int:
    print(f"lora-service: {message}", file=sys.stderr)
    return EXIT_NOT_MIGRATED


def check_database(settings: Settings) -> int:
    """Migrate (``AUTO_MIGRATE``) or verify the schema; 0 when ready, else 2 with a message."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.db.engine import get_engine
    from service.db.migrations import DatabaseNotMigrated, require_migrated, upgrade

    try:
        if settings.auto_migrate:
            upgrade(settings.database_url)
        require_migrated(get_engine(settings.database_url))
    except DatabaseNotMigrated as exc:
        return _fail(str(exc))
    except SQLAlchemyError as exc:
        return _fail(f"cannot use the database: {exc}")
    return 0


def cmd_migrate(_: argparse.Namespace, settings: Settings) -> int:
    """Run ``alembic upgrade head`` on DATABASE_URL."""
    from service.db.engine import get_engine
    from service.db.migrations import current_and_head, upgrade

    upgrade(settings.database_url)
    current, _head = current_and_head(get_engine(settings.database_url))
    url = get_engine(settings.database_url).url.render_as_string(hide_password=True)
    print(f"lora-service: database {url} is at revision {current} (head)")
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the API with uvicorn on HOST:PORT (flags override)."""
    if code := check_database(settings):
        return code
    import uvicorn

    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours (LOG_FORMAT, request ids)
    )
    return 0


def worker_argv(settings: Settings, name: str | None = None) -> list[str]:
    """The ``celery worker`` arguments: solo pool, the training queue, no mingle/gossip.

    ``--broker`` is explicit because Celery's CLI would otherwise read the ``BROKER_URL``
    environment variable itself, bypassing :func:`service.jobs.queue.broker_params`.
    """
    from service.jobs.queue import broker_params

    return [
        f"--broker={broker_params(settings.broker_url)[0]}",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--queues={settings.training_queue}",
        f"--loglevel={settings.log_level}",
        f"--hostname={name or f'worker{os.getpid()}'}@%h",
        "--without-mingle",
        "--without-gossip",
    ]


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run one Celery worker (solo pool: jobs run in this process, one at a time)."""
    if code := check_database(settings):
        return code
    from worker.celery_app import worker_app

    code = 0
    try:
        worker_app(settings).worker_main(worker_argv(settings, args.name))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    # Celery has finished its warm shutdown (the running job completed and was acknowledged).
    # Skip interpreter teardown: collecting torch's object graph takes seconds on a busy host.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_worker_health(args: argparse.Namespace, settings: Settings) -> int:
    """0 when WORKER_HEARTBEAT_FILE (or ``--file``) was rewritten within
    WORKER_HEALTH_MAX_AGE seconds (or ``--max-age``), else 1; prints why."""
    from pathlib import Path

    from worker.observe import check_heartbeat

    path = Path(args.file) if args.file else settings.worker_heartbeat_file
    healthy, why = check_heartbeat(path, args.max_age or settings.worker_health_max_age)
    print(f"lora-service: {'live' if healthy else 'NOT live'}: {why}")
    return 0 if healthy else 1


def cmd_dev(_: argparse.Namespace, settings: Settings) -> int:
    """Migrate, then run ``api`` and ``worker`` under honcho; Ctrl-C (or either exiting)
    stops both. Returns honcho's exit code."""
    from honcho.manager import Manager

    cmd_migrate(_, settings)
    manager = Manager()
    for name in DEV_PROCESSES:
        manager.add_process(name, shlex.join([sys.executable, "-m", "service.cli", name]))
    manager.loop()
    return manager.returncode or 0


def build_parser() -> argparse.ArgumentParser:
    """The ``lora-service`` argument parser."""
    parser = argparse.ArgumentParser(prog="lora-service", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="bring the database to the latest schema").set_defaults(
        func=cmd_migrate
    )
    api = sub.add_parser("api", help="serve the REST API")
    api.add_argument("--host", default=None, help="default: HOST setting")
    api.add_argument("--port", type=int, default=None, help="default: PORT setting")
    api.set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="run one training worker")
    worker.add_argument("--name", default=None, help="worker name (default worker<pid>)")
    worker.set_defaults(func=cmd_worker)
    health = sub.add_parser("worker-health", help="is the worker's heartbeat file fresh?")
    health.add_argument("--file", default=None, help="default: WORKER_HEARTBEAT_FILE")
    health.add_argument("--max-age", type=float, default=None, help="seconds")
    health.set_defaults(func=cmd_worker_health)
    sub.add_parser("dev", help="migrate, then API + one worker; Ctrl-C stops both").set_defaults(
        func=cmd_dev
    )
    cmp = sub.add_parser("compare", help="run the full-FT vs LoRA comparison via the API")
    compare.add_arguments(cmp)
    cmp.set_defaults(func=compare.run)
    dem = sub.add_parser("demo", help="start the embedded stack and run `compare` on it")
    compare.add_arguments(dem)
    dem.set_defaults(func=demo.demo)
    commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings)
    func = args.func
    if func.__module__ == __name__:
        return int(func(args, settings) or 0)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
