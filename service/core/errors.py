"""Errors that answer a request: :class:`ApiError` and the constructors every layer shares.

No FastAPI here: the database, jobs, serving and adapters layers raise these, and
``service.api.errors`` turns them into the one error envelope,
``{"error": {"code", "message", "param"}}``.
"""

from __future__ import annotations


class ApiError(Exception):
    """Raise from anywhere below the routes to answer ``status`` with the envelope.

    Args:
        status: HTTP status code (4xx for the client's mistakes, 503 for what is down).
        code: stable snake_case code, e.g. ``"adapter_not_found"``.
        message: what was wrong, for a person.
        param: the request field at fault, if any (dotted path).
        headers: extra response headers (``Retry-After`` of a 429).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers


def not_found(kind: str, ident: str, param: str | None = None) -> ApiError:
    """A 404 ``ApiError`` for an unknown id of ``kind`` ("job", "model", "adapter")."""
    return ApiError(404, f"{kind}_not_found", f"No {kind} with id {ident!r}.", param)


def artifact_unavailable(kind: str, ident: str, why: object) -> ApiError:
    """A 503 ``ApiError``: a registered ``kind`` whose files cannot be loaded (gone, corrupt)."""
    return ApiError(
        503,
        "artifact_unavailable",
        f"The {kind} {ident!r} is registered but cannot be loaded: {why}",
    )


def database_busy() -> ApiError:
    """The 503 for a write SQLite kept refusing after every retry."""
    return ApiError(503, "database_busy", "The database is busy; retry in a moment.")


def adapter_model_mismatch(adapter_id: str, owner: str, asked: str) -> ApiError:
    """The 409 for an adapter used with a model it was not trained on."""
    return ApiError(
        409,
        "adapter_model_mismatch",
        f"Adapter {adapter_id!r} belongs to model {owner!r}, not {asked!r}.",
        "adapter_id",
    )


RETRY_AFTER_SECONDS = 5
"""``Retry-After`` (s) sent with every 503: a database or broker that went away is usually
back (or failed over) within seconds."""


def is_disk_full(exc: BaseException) -> bool:
    """True for ``OSError`` ENOSPC / EDQUOT (no space left, disk quota exceeded)."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def storage_full(what: str) -> ApiError:
    """The 507 for a write refused because the artifact directory's disk is full."""
    return ApiError(
        507,
        "storage_full",
        f"No space left to store the {what}; nothing was kept. Retry once space is freed.",
    )


def database_unavailable() -> ApiError:
    """The 503 for a request whose database connection failed (database down or cut off)."""
    return ApiError(503, "database_unavailable", "The database is unreachable; retry in a moment.")
