"""Per-request observability: the request id and the HTTP metrics (pure ASGI middleware).

* ``X-Request-ID``: taken from the request when it is 1-128 characters of
  ``[A-Za-z0-9._:-]``, else generated (``req_`` + 16 hex digits); put in a context
  variable for every log line of the request (:mod:`service.core.logs`), echoed in the
  response header and in every error body (:func:`service.api.errors.error_response`).
* Metrics (unless ``METRICS_ENABLED=false``), labelled by the *route template*
  (``/jobs/{job_id}``, never the raw path; ``unmatched`` when no route matches):

  - ``lora_http_requests_total{route, method, status}``
  - ``lora_http_request_duration_seconds{route, method}`` (histogram, until the last byte)
  - ``lora_http_requests_in_flight`` (gauge)
  - ``lora_http_request_body_bytes{route, method}`` (histogram of bytes received)
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.logs import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "lora_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "lora_http_request_duration_seconds",
    "Seconds from request start to the last response byte.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge(
    "lora_http_requests_in_flight", "HTTP requests being answered.", multiprocess_mode="livesum"
)
BODY_BYTES = Histogram(
    "lora_http_request_body_bytes",
    "Bytes of request body received.",
    ["route", "method"],
    buckets=(0, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
)


def request_id_of(scope: Scope) -> str:
    """The request's ``X-Request-ID`` when valid, else a new ``req_<16 hex>``."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            supplied = value.decode("latin-1").strip()
            if _VALID_ID.fullmatch(supplied):
                return supplied
            break
    return f"req_{secrets.token_hex(8)}"


def route_template(app: Any, scope: Scope) -> str:
    """The path template of the route that serves ``scope`` (``unmatched`` when none):
    the route the router recorded, else the first route matching the path (a request
    answered before routing, e.g. 401)."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    for candidate in getattr(app, "routes", ()):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return getattr(candidate, "path", UNMATCHED)
    return UNMATCHED


class ObserveMiddleware:
    """Request id + HTTP metrics (see the module docstring).

    Args:
        app: the wrapped ASGI app.
        router_app: the FastAPI app (its routes name unrouted requests).
        metrics: record the HTTP metrics.
    """

    def __init__(self, app: ASGIApp, router_app: Any, metrics: bool = True) -> None:
        self.app = app
        self.router_app = router_app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        request_id_var.set(request_id)  # this request's task only (not reset: 500s use it)
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        status = 500
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(k.lower() == header[0] for k, _ in headers):
                    headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        if not self.metrics:
            await self.app(scope, receive, tagging_send)
            return
        start = time.perf_counter()
        IN_FLIGHT.inc()
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            IN_FLIGHT.dec()
            route = route_template(self.router_app, scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            REQUESTS.labels(route, method, str(status)).inc()
            DURATION.labels(route, method).observe(time.perf_counter() - start)
            BODY_BYTES.labels(route, method).observe(received)
