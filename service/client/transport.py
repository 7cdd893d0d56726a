"""The client's plumbing: one ``httpx`` connection pool with the bearer key, and
:class:`ServiceError` made from the API's error envelope ``{"error": {code, message, param}}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

import httpx
from pydantic import SecretStr

USER_AGENT = "lora-service-client/0.1"

FileInput = str | os.PathLike[str] | bytes | tuple[str, bytes]
"""An image or adapter file: a path, raw bytes, or ``(file name, bytes)``."""


class ServiceError(RuntimeError):
    """The service answered with an error, could not be reached, or a job did not succeed.

    Attributes:
        status: the HTTP status (None when there was no answer, or for a job's failure).
        code: the envelope's stable code, e.g. ``"job_not_found"``; ``"unreachable"`` when
            the service could not be reached.
        message: the envelope's message, for a person.
        param: the request field at fault, if the service named one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        request: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.request = request
        where = f"{request} -> {status} " if request and status else ""
        super().__init__(f"{where}{code}: {message}" if code else f"{where}{message}")

    def envelope(self) -> dict[str, Any]:
        """The error as the API's envelope plus the HTTP status: ``{"error": {...}}``."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "status": self.status,
            }
        }


def error_from(resp: httpx.Response) -> ServiceError:
    request = f"{resp.request.method} {resp.request.url}"
    try:
        err = resp.json()["error"]
        code, message, param = str(err["code"]), str(err["message"]), err.get("param")
    except (ValueError, KeyError, TypeError):
        code, message, param = "http_error", resp.text[:300] or resp.reason_phrase, None
    return ServiceError(message, status=resp.status_code, code=code, param=param, request=request)


def file_part(item: FileInput, field: str) -> tuple[str, tuple[str, bytes]]:
    if isinstance(item, bytes):
        return field, ("upload", item)
    if isinstance(item, tuple):
        return field, item
    path = Path(item)
    return field, (path.name, path.read_bytes())


def drop_none(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class Transport:
    """One connection pool to the service, with the bearer key on every request.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8000`` (default: the ``API_URL``
            setting).
        api_key: sent as ``Authorization: Bearer <key>`` (default: the ``API_KEY`` setting;
            ``""`` sends none).
        timeout: seconds to wait for an answer (streams wait longer between events).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        timeout: float = 60.0,
    ) -> None:
        if base_url is None or api_key is None:
            from service.core.settings import get_settings

            settings = get_settings()
            base_url = base_url or settings.api_url
            api_key = settings.api_key if api_key is None else api_key
        if isinstance(api_key, SecretStr):
            api_key = api_key.get_secret_value()
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request (``httpx`` keyword arguments); returns a 2xx/3xx response.

        Raises:
            ServiceError: an error answer (its envelope), or ``code="unreachable"``.
        """
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if resp.status_code >= 400:
            raise error_from(resp)
        return resp

    def unreachable(self, exc: Exception) -> ServiceError:
        """The :class:`ServiceError` for a request that got no answer."""
        return ServiceError(
            f"cannot reach the service at {self.base_url}: {exc}", code="unreachable"
        )

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, then the answer's JSON body."""
        return self.request(method, path, **kwargs).json()
