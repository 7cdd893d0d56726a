"""``lora-service demo``: the embedded stack up, ``compare`` against it, the stack down.

For a machine with only Python: nothing needs to be running first. The API's and the
worker's output goes to ``var/demo-stack.log`` so the progress bars stay readable.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from service.client.compare import console, run
from service.client.http import Client
from service.core.settings import get_settings

LOG_PATH = Path("var") / "demo-stack.log"


def demo(args: argparse.Namespace) -> int:
    """Entry point of ``lora-service demo``; returns the process exit code.

    Starts ``lora-service dev`` (migrate, then API + one worker on SQLite) as a child process
    group, waits up to 120 s for ``/health``, runs the comparison, and stops the stack
    (SIGINT, then SIGKILL after 20 s) whatever the outcome.
    """
    settings = get_settings()
    console.print(
        f"starting the embedded stack (API {settings.api_url}, database {settings.database_url},"
        f" MNIST from {settings.data_dir}); its output goes to {LOG_PATH}"
    )
    LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
    with LOG_PATH.open("ab") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "dev"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        Client(settings.api_url, settings.api_key).wait_healthy(120)
        return run(args)
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        try:
            stack.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()
