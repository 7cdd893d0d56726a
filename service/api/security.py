"""Request-level security: a streaming body-size limit and bearer API keys.

Both are pure ASGI middleware (no ``BaseHTTPMiddleware``), so they see the body as it
streams in and can answer before the route, its multipart parser or its temp files run.

* :class:`BodySizeLimitMiddleware` answers 413 ``request_too_large`` when
  ``Content-Length`` exceeds the limit (without reading a byte of the body), and when a
  chunked body crosses it while arriving (the route's ``receive`` raises, the route's
  answer is discarded and the 413 envelope is sent instead). Starlette's multipart parser
  closes its spooled temp files when ``receive`` raises, so nothing is left on disk.
* :class:`ApiKeyMiddleware` requires ``Authorization: Bearer <key>`` on every path but
  ``/health`` and the docs when keys are configured; keys are compared with
  :func:`hmac.compare_digest` against every configured key and never logged; the
  request's ``state.api_key_id`` is the matching key's id (a hash, never the key).

:func:`install_security` wires both into the app and declares the bearer scheme in OpenAPI.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.core.api_keys import key_id
from service.core.settings import Settings

log = logging.getLogger("service.api.security")

BEARER_SCHEME_NAME = "bearerAuth"
HEALTH_PATH = "/health"
API_KEY_ID = "api_key_id"
"""``request.state.api_key_id``: the id (:func:`service.core.api_keys.key_id`) of the key
that authenticated the request; absent on an open API."""
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


class RequestTooLarge(HTTPException):
    """Raised from ``receive`` when the body crosses the limit (a 413 ``HTTPException``).

    Being an ``HTTPException`` lets FastAPI's body reader re-raise it instead of turning it
    into a 400; the middleware answers the 413 envelope whatever the route does with it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body exceeds the limit of {limit} bytes.")
        self.limit = limit


def _too_large(limit: int, what: str = "Request body") -> Any:
    return error_response(
        413,
        "request_too_large",
        f"{what} exceeds the limit of {limit} bytes (MAX_REQUEST_BYTES).",
        headers={"Connection": "close"},
    )


class BodySizeLimitMiddleware:
    """Reject request bodies larger than ``max_bytes`` with a 413 envelope.

    Args:
        app: the wrapped ASGI app.
        max_bytes: largest body accepted (bytes), counted as received (chunked included).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                response = error_response(
                    400, "bad_request", f"Invalid Content-Length header {declared!r}."
                )
                await response(scope, receive, send)
                return
            if length > self.max_bytes:
                await _too_large(self.max_bytes)(scope, receive, send)
                return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise RequestTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise RequestTooLarge(self.max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the route's answer to a cut-off body is replaced by ours
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _too_large(self.max_bytes)(scope, receive, send)


def _bearer_token(scope: Scope) -> bytes | None:
    """The raw token of the first ``Authorization: Bearer <token>`` header, else None."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                return None
            token = token.strip()
            return token or None
    return None


def key_matches(supplied: bytes, keys: Iterable[bytes]) -> bool:
    """True when ``supplied`` equals one of ``keys``, in time independent of where they differ.

    Every key is compared (no short-circuit) with :func:`hmac.compare_digest`.
    """
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key)
    return matched


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every non-public path.

    Args:
        app: the wrapped ASGI app.
        keys: accepted keys (non-empty).
        public_paths: exact paths served without a key (health, docs, schema).
        public_prefixes: path prefixes served without a key (``/health/``).

    A missing or wrong key gets 401 ``unauthorized`` with ``WWW-Authenticate: Bearer``.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        public_paths: Iterable[str],
        public_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self._keys = tuple(k.encode("utf-8") for k in keys)
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)

    def is_public(self, path: str) -> bool:
        """True when ``path`` needs no key."""
        return path in self.public_paths or path.startswith(self.public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        if token is not None and key_matches(token, self._keys):
            scope.setdefault("state", {})[API_KEY_ID] = key_id(token)  # Request.state
            await self.app(scope, receive, send)
            return
        if token is None:
            message = "Missing API key: send `Authorization: Bearer <key>`."
            challenge = "Bearer"
        else:
            message = "Invalid API key."
            challenge = 'Bearer error="invalid_token"'
        response = error_response(
            401, "unauthorized", message, headers={"WWW-Authenticate": challenge}
        )
        await response(scope, receive, send)


def _public_paths(app: FastAPI) -> list[str]:
    docs = [app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url]
    return [HEALTH_PATH, *(p for p in docs if p)]


def _declare_bearer_scheme(app: FastAPI, keyed: bool, is_public: Callable[[str], bool]) -> None:
    """Wrap ``app.openapi`` so the schema names the bearer scheme and where it is required."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME_NAME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from API_KEYS, sent as `Authorization: Bearer <key>`."
            + ("" if keyed else " This deployment runs open: no key is required."),
        }
        if keyed:
            for path, item in schema.get("paths", {}).items():
                for method, operation in item.items():
                    if method in _HTTP_METHODS:
                        public = is_public(path)
                        operation["security"] = [] if public else [{BEARER_SCHEME_NAME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_security(
    app: FastAPI,
    settings: Settings,
    extra_public_paths: Iterable[str] = (),
    extra_public_prefixes: Iterable[str] = (),
) -> None:
    """Add the body-size limit and (when keys are configured) API-key checks to ``app``.

    Args:
        app: the FastAPI app (routers may be included afterwards).
        settings: ``max_request_bytes`` (bytes) and ``api_keys`` are used.
        extra_public_paths: more exact paths served without a key (the dashboard, docs).
        extra_public_prefixes: more path prefixes served without a key (static files).

    With no keys configured the API is open, which is logged as a WARNING.
    """
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    keys = [v for k in settings.api_keys if (v := k.get_secret_value())]
    public_paths = [*_public_paths(app), *extra_public_paths]
    if settings.metrics_token is not None:  # /metrics checks METRICS_TOKEN itself
        public_paths.append("/metrics")
    public_prefixes = (HEALTH_PATH + "/", *extra_public_prefixes)

    def is_public(path: str) -> bool:
        return path in public_paths or path.startswith(public_prefixes)

    if keys:
        app.add_middleware(
            ApiKeyMiddleware, keys=keys, public_paths=public_paths, public_prefixes=public_prefixes
        )
        log.info("API keys required on every endpoint but %s (%d key(s))", public_paths, len(keys))
    else:
        log.warning(
            "!!! API_KEYS is empty: the API is OPEN, anyone who can reach it can train, "
            "import adapters and predict. Set API_KEYS outside local development. !!!"
        )
    _declare_bearer_scheme(app, bool(keys), is_public)
