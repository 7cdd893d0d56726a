"""Servers that the fault tests (and ``benchmarks/soak.py``) start, stop and cut themselves.

* :class:`RedisServer`: a private ``redis-server`` on a free port, in its own directory.
  :meth:`RedisServer.kill` stops it as a crash does (SIGKILL); :meth:`RedisServer.start`
  brings it back on the same port, with its data (an append-only file, fsync always) or
  without (the directory emptied first: every message in it is lost).
* :func:`cut_database`: a private database on the machine's Postgres made unreachable:
  ``ALLOW_CONNECTIONS false`` and every open connection to it terminated
  (``pg_terminate_backend``), until the context ends. Other databases are not touched.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` on 127.0.0.1:``port`` with its files in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, keep_data: bool = True, timeout: float = 10.0) -> RedisServer:
        """Start the server (emptying its directory first unless ``keep_data``); waits until
        it accepts connections.

        Raises:
            RuntimeError: not up within ``timeout`` s.
        """
        if not keep_data:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
        ]  # fmt: skip
        log = (self.directory.parent / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL the server (as a crash or an OOM kill) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop it for good (end of a test)."""
        self.kill()


def _admin(sql: str, *params: object) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def refuse_connections(db_name: str) -> None:
    """Make ``db_name`` unreachable: refuse new connections, terminate the open ones."""
    _admin(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS false')
    _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        db_name,
    )


def allow_connections(db_name: str) -> None:
    """Undo :func:`refuse_connections`."""
    _admin(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS true')


@contextmanager
def cut_database(db_name: str) -> Iterator[None]:
    """``db_name`` unreachable for the duration of the ``with`` block (see module doc)."""
    refuse_connections(db_name)
    try:
        yield
    finally:
        allow_connections(db_name)


def database_name(url: str) -> str:
    """The database name of a SQLAlchemy/libpq URL."""
    return url.rsplit("/", 1)[1].split("?", 1)[0]
