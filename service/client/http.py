"""A thin, typed client of the service's REST API (``httpx``; bearer key optional).

What the CLI commands (``compare``, ``demo``) talk to the service through; it knows the
public API only, never the service's code.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from pydantic import SecretStr


class ServiceError(RuntimeError):
    """A job failed or the service answered with an error."""


class Client:
    """The service's REST API over ``httpx`` (bearer key optional).

    Raises:
        ServiceError: from every call that gets a 4xx/5xx answer (code and message).
    """

    def __init__(
        self, base_url: str, api_key: SecretStr | str | None = None, timeout: float = 60.0
    ):
        if isinstance(api_key, SecretStr):
            api_key = api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def _check(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                detail = f"{err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                detail = resp.text[:300]
            raise ServiceError(
                f"{resp.request.method} {resp.request.url} -> {resp.status_code} {detail}"
            )
        return resp.json()

    def submit(self, kind: str, config: dict[str, Any], base_model_id: str | None = None) -> dict:
        """POST /jobs; returns the job."""
        body: dict[str, Any] = {"kind": kind, "config": config}
        if base_model_id:
            body["base_model_id"] = base_model_id
        return self._check(self.http.post("/jobs", json=body))

    def job(self, job_id: str) -> dict:
        """GET /jobs/{id}."""
        return self._check(self.http.get(f"/jobs/{job_id}"))

    def metrics(self, job_id: str) -> dict:
        """GET /jobs/{id}/metrics."""
        return self._check(self.http.get(f"/jobs/{job_id}/metrics"))

    def get(self, path: str) -> dict:
        """GET any resource by path."""
        return self._check(self.http.get(path))

    def evaluate(self, **body: Any) -> dict:
        """POST /evaluate."""
        return self._check(self.http.post("/evaluate", json=body))

    def wait_healthy(self, seconds: float) -> None:
        """Poll GET /health until it answers 200, for at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"service at {self.http.base_url} not healthy after {seconds} s")
            time.sleep(0.5)
