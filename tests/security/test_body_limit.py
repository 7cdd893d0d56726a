"""The request body limit: declared and streamed (chunked) bodies, over real HTTP too,
and no spooled temp file left behind by a rejected multipart upload.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import File, Request, UploadFile
from fastapi.testclient import TestClient

from service.api.security import BodySizeLimitMiddleware

LIMIT = 64 * 1024


def _add_echo_routes(app) -> list[int]:
    """Routes that read the whole body / a multipart upload; returns marks of completed reads."""
    calls: list[int] = []

    @app.post("/test-echo")
    async def echo(request: Request) -> dict[str, int]:
        body = await request.body()
        calls.append(1)
        return {"bytes": len(body)}

    @app.post("/test-upload")
    async def upload(file: Annotated[UploadFile, File()]) -> dict[str, int]:
        calls.append(2)
        return {"bytes": len(await file.read())}

    return calls


def _assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert str(LIMIT) in error["message"]


def test_body_under_and_at_the_limit_passes(make_app):
    app = make_app(max_request_bytes=LIMIT)
    _add_echo_routes(app)
    with TestClient(app) as client:
        for size in (0, 10, LIMIT):
            response = client.post("/test-echo", content=b"x" * size)
            assert response.status_code == 200, size
            assert response.json() == {"bytes": size}


def test_declared_content_length_over_limit_is_413_without_calling_the_route(make_app):
    app = make_app(max_request_bytes=LIMIT)
    calls = _add_echo_routes(app)
    with TestClient(app) as client:
        _assert_413(client.post("/test-echo", content=b"x" * (LIMIT + 1)))
        files = {"file": ("big.bin", b"x" * (LIMIT + 1), "application/octet-stream")}
        _assert_413(client.post("/test-upload", files=files))
    assert calls == []


def test_chunked_body_over_limit_is_413(make_app):
    app = make_app(max_request_bytes=LIMIT)
    calls = _add_echo_routes(app)

    def chunks():
        for _ in range(20):
            yield b"y" * 8192

    with TestClient(app) as client:
        response = client.post("/test-echo", content=chunks())
    assert "content-length" not in response.request.headers
    _assert_413(response)
    assert calls == []  # the route's body read raised before it returned


def test_invalid_content_length_is_400():
    sent: list[dict] = []

    async def never(scope, receive, send):  # pragma: no cover - must not run
        raise AssertionError("app called")

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"x")]}
    asyncio.run(BodySizeLimitMiddleware(never, LIMIT)(scope, receive, send))
    assert sent[0]["status"] == 400


# ------------------------------------------------------------------------ real HTTP


def _open_files_under(directory: Path) -> list[str]:
    """Paths of this process's open file descriptors that live under ``directory``."""
    found = []
    prefix = str(directory)
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith(prefix):
            found.append(str(target))
    return found


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head


def test_huge_declared_length_is_refused_before_any_body_is_sent(make_app, live_server):
    app = make_app(max_request_bytes=LIMIT)
    _add_echo_routes(app)
    with live_server(app) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"POST /test-echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n"
            )
            status, head = _read_response(sock)
    assert status == 413
    assert b"connection: close" in head.lower()


def test_chunked_generator_body_over_real_http_is_413(make_app, live_server):
    def body():
        for _ in range(16):
            yield b"z" * 8192

    app = make_app(max_request_bytes=LIMIT)
    _add_echo_routes(app)
    with live_server(app) as server:
        response = httpx.post(f"{server.url}/test-echo", content=body(), timeout=10)
    _assert_413(response)


def test_unterminated_chunked_body_is_cut_off_while_streaming(make_app, live_server):
    """The client never finishes its body: the 413 must come from counting alone."""
    app = make_app(max_request_bytes=LIMIT)
    _add_echo_routes(app)
    with live_server(app) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"POST /test-echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"q" * 4096
            for _ in range(LIMIT // len(chunk) + 1):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            status, _ = _read_response(sock)
    assert status == 413


def test_rejected_multipart_upload_leaves_no_temp_file(make_app, live_server, spool_dir: Path):
    """Starlette spools uploads over 1 MiB to disk; a body cut off later must not leak it."""
    limit = 3 * 1024 * 1024
    app = make_app(max_request_bytes=limit)
    calls = _add_echo_routes(app)
    boundary = b"b0undary"
    head = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
        b'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    chunk = b"\0" * 65536
    with live_server(app) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /test-upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n"
        )
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        sent = len(head)
        for _ in range(2 * 1024 * 1024 // len(chunk)):  # 2 MiB: rolled over to disk by now
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        deadline = time.monotonic() + 10
        while not _open_files_under(spool_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _open_files_under(spool_dir), "the upload never spooled to disk (test is void)"
        while sent <= limit:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        status, _ = _read_response(sock)
        assert status == 413
    assert calls == []
    assert _open_files_under(spool_dir) == []
    assert list(spool_dir.iterdir()) == []
