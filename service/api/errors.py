"""The one error envelope for every 4xx/5xx: ``{"error": {"code", "message", "param"}}``.

:class:`service.core.errors.ApiError` (raised by any layer), FastAPI's validation errors and
Starlette's HTTP errors all answer through :func:`install_error_handlers`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import RETRY_AFTER_SECONDS, ApiError, database_busy, database_unavailable
from service.core.logs import request_id_var
from service.db.retry import is_locked, is_unreachable

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The inside of the envelope: a stable machine code, a human message, the offending
    field, and the request's id (the ``X-Request-ID`` answer header; in the logs)."""

    code: str
    message: str
    param: str | None = None
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """Schema of every error answer (used in the OpenAPI document)."""

    error: ErrorBody


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: Any = None
) -> JSONResponse:
    """Build the envelope response directly (for middleware that cannot raise); it carries
    the current request's id (body and ``X-Request-ID`` header) when one is set, and a 503
    gets ``Retry-After`` (:data:`~service.core.errors.RETRY_AFTER_SECONDS`) unless given one."""
    request_id = request_id_var.get()
    body = {"error": {"code": code, "message": message, "param": param, "request_id": request_id}}
    if request_id is not None:
        headers = {**(headers or {}), "X-Request-ID": request_id}
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **dict(headers or {})}
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Route FastAPI's validation errors, HTTP errors and ``ApiError`` through the envelope.

    Every 503 carries ``Retry-After`` (:data:`~service.core.errors.RETRY_AFTER_SECONDS`). A
    database error that means the database cannot be reached (:func:`is_unreachable`: down,
    restarting, connections terminated) answers 503 ``database_unavailable``; the pool's
    pre-ping reconnects on the next request once it is back.
    """

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if is_locked(exc):
            return await _api_error(request, database_busy())
        if is_unreachable(exc):  # down, restarting or connections cut: a 503, never a 500
            log.warning("database unreachable: %s", exc.orig)
            return await _api_error(request, database_unavailable())
        return await _unhandled(request, exc)

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free: %s", exc)
        return await _api_error(request, database_unavailable())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "Invalid request."}
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx") or {}
            detail = ctx.get("error", "malformed JSON")
            return error_response(400, "invalid_json", f"Request body is not valid JSON: {detail}")
        param = _loc_to_param(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "Invalid request."))
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem(s))"
        message = f"{param}: {msg}" if param else msg
        return error_response(422, "validation_error", message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return error_response(500, "internal_error", "Internal server error.")
