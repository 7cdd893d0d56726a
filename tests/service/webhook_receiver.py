"""A real webhook receiver for tests: an ``http.server`` thread on a free 127.0.0.1 port that
records every POST and answers what each path is told to (statuses in turn, delays)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Received:
    """One POST as it arrived, and the status it was answered with."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """``with Receiver() as r:`` serves ``r.url(path)``; every path answers 200 unless told
    otherwise by :meth:`answer` (statuses for the next requests) or :attr:`default`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._queued: dict[str, deque[int]] = defaultdict(deque)
        self._delays: dict[str, deque[float]] = defaultdict(deque)
        self.default: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status, delay = owner._next(self.path)
                if delay:
                    time.sleep(delay)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner._lock:
                    owner._received.append(Received(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _next(self, path: str) -> tuple[int, float]:
        with self._lock:
            queued, delays = self._queued[path], self._delays[path]
            status = queued.popleft() if queued else self.default.get(path, 200)
            return status, delays.popleft() if delays else 0.0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        """Answer the next requests to ``path`` with ``statuses``, in turn."""
        with self._lock:
            self._queued[path].extend(statuses)

    def delay(self, path: str, *seconds: float) -> None:
        """Wait this long before answering the next requests to ``path``, in turn."""
        with self._lock:
            self._delays[path].extend(seconds)

    def received(self, path: str | None = None) -> list[Received]:
        """The POSTs so far (to ``path``, or all), in arrival order."""
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def wait(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``probe`` every 20 ms until truthy (returned); AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while not (value := probe()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s: {what}; got {self.received()}")
            time.sleep(0.02)
        return value

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def verified(secret: str, request: Received) -> dict[str, Any]:
    """The payload of ``request`` after checking its Standard Webhooks signature the way a
    receiver would (``standardwebhooks.Webhook(secret).verify``); raises if it is wrong."""
    return Webhook(secret).verify(request.body, request.headers)
