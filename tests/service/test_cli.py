"""``lora-service``: unmigrated databases are refused; ``dev`` starts both processes and
Ctrl-C stops both."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.cli import PROCESS_COMMANDS, build_parser, check_database
from service.core.settings import Settings

BIN = Path(sys.executable).with_name("lora-service")
SETTINGS_VARS = {name.upper() for name in Settings.model_fields}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS_VARS}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'lora.db'}",
        BROKER_URL=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        ARTIFACT_DIR=str(tmp_path / "artifacts"),
        MNIST_DOWNLOAD="false",
        **extra,
    )
    return env


@pytest.mark.parametrize("process", ["api", "worker"])
def test_refuses_unmigrated_database(tmp_path: Path, process: str) -> None:
    command = [str(BIN), *PROCESS_COMMANDS[process][1:]]
    result = subprocess.run(
        command, env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "lora-service migrate" in result.stderr and "AUTO_MIGRATE" in result.stderr


def test_auto_migrate_brings_database_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    assert check_database(Settings(database_url=url, _env_file=None)) == 2
    assert check_database(Settings(database_url=url, auto_migrate=True, _env_file=None)) == 0
    assert check_database(Settings(database_url=url, _env_file=None)) == 0


def test_parser_has_every_subcommand() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"migrate", "api", "worker", "dev"} <= set(choices)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.e2e
def test_dev_runs_api_and_worker_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [str(BIN), "dev"],
            env=_env(tmp_path, PORT=str(port), API_KEYS=""),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal job
        )
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text(errors="replace"):
            assert dev.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        pids = [int(p) for p in re.findall(r"started \(pid=(\d+)\)", log.read_text())]
        assert len(pids) == 2

        os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert dev.wait(30) is not None
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), log.read_text()[-3000:]
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
