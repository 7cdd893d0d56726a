"""Per-key request rate limits on ``POST /predict`` and ``POST /jobs`` (OWASP API4).

A token bucket per (API key id, endpoint) in each API process: ``RATE_LIMIT_PER_SECOND``
tokens a second, at most ``RATE_LIMIT_BURST`` saved up; a request without a token gets 429
``rate_limited`` with ``Retry-After`` (whole seconds until the next token). On an open API
(no keys) the client address stands in for the key. Buckets live in the process: with N
API processes behind a load balancer a key may send up to N times the rate. Off while
``RATE_LIMIT_PER_SECOND`` is unset.

The cap on each key's queued + running jobs is checked at submission
(:func:`service.jobs.submit.submit_job`, ``MAX_ACTIVE_JOBS_PER_KEY``).
"""

from __future__ import annotations

import math
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.api.security import API_KEY_ID

LIMITED = {("POST", "/predict"), ("POST", "/jobs")}


class RateLimitMiddleware:
    """Pure ASGI middleware: answer 429 once a key's bucket for the endpoint is empty.

    Args:
        rate: tokens per second (> 0).
        burst: bucket size (>= 1 request).
    """

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app, self.rate, self.burst = app, rate, float(burst)
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, who: str, endpoint: str, now: float | None = None) -> float:
        """Take a token from ``(who, endpoint)``'s bucket; returns 0 if there was one, else
        the seconds until the next token."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get((who, endpoint), (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[(who, endpoint)] = (tokens - 1, now)
            return 0.0
        self._buckets[(who, endpoint)] = (tokens, now)
        return (1 - tokens) / self.rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (scope.get("method", ""), scope.get("path", ""))
        if scope["type"] != "http" or endpoint not in LIMITED:
            await self.app(scope, receive, send)
            return
        who = scope.get("state", {}).get(API_KEY_ID) or (scope.get("client") or ("?",))[0]
        wait = self.take(who, endpoint[1])
        if not wait:
            await self.app(scope, receive, send)
            return
        seconds = max(1, math.ceil(wait))
        response = error_response(
            429,
            "rate_limited",
            f"Too many requests to {endpoint[0]} {endpoint[1]} for this API key "
            f"(RATE_LIMIT_PER_SECOND); retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )
        await response(scope, receive, send)
