"""The service's public Python client: typed calls over its REST API (``httpx``).

::

    from service.client import Client, ServiceError

    with Client("http://127.0.0.1:8000", api_key="...") as client:  # Client(): API_URL, API_KEY
        job = client.jobs.submit("pretrain", {"epochs": 3})
        for event in client.jobs.stream_events(job["id"]):  # live, until the job has ended
            print(event["type"], event["message"])
        model_id = client.jobs.get(job["id"])["result"]["model_id"]
        print(client.predict(["docs/examples/seven.png"], model_id=model_id)[0]["digit"])

Calls are grouped as the API is: ``client.jobs``, ``client.models``, ``client.adapters``
(:mod:`service.client.resources`), then ``client.predict``, ``client.evaluate`` and
``client.health``. They return the API's JSON as typed dicts (:mod:`service.client.types`)
and raise :class:`ServiceError` for every error answer, carrying the envelope's ``code``,
``message`` and ``param`` and the HTTP ``status``. The client knows the public API only,
never the service's code; ``compare``, ``demo`` and the ``jobs``, ``models``, ``adapters``
and ``predict`` commands of ``lora-service`` are built on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from service.client.resources import Adapters, Jobs, Models
from service.client.transport import FileInput, ServiceError, Transport, drop_none, file_part
from service.client.types import Evaluation, Health, Prediction

__all__ = ["Client", "ServiceError"]


class Client(Transport):
    """The service's REST API (bearer API key optional).

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8000`` (default: the ``API_URL``
            setting).
        api_key: sent as ``Authorization: Bearer <key>`` (default: the ``API_KEY`` setting;
            ``""`` sends none).
        timeout: seconds to wait for an answer (streams wait longer between events).

    Use it as a context manager, or call :meth:`close`. Every call raises
    :class:`ServiceError` on an error answer (4xx/5xx) or when the service is unreachable.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.adapters = Adapters(self)

    def predict(
        self,
        files: Sequence[FileInput] | None = None,
        *,
        pixels: Any = None,
        model_id: str | None = None,
        adapter_id: str | None = None,
    ) -> list[Prediction]:
        """``POST /predict``: the digit of each image, in order.

        Args:
            files: image files (PNG, JPEG, GIF, BMP, WebP; any size, either polarity).
            pixels: instead of files, one 28 x 28 array of values in [0, 255] (nested lists
                or anything with ``.tolist()``), or a list of them.
            model_id: the base model (default: the service's newest pre-trained one).
            adapter_id: a LoRA adapter of that model (default: none).
        Returns:
            one :class:`Prediction` per image (also for a single one).
        Raises:
            ValueError: neither or both of ``files`` and ``pixels``.
            ServiceError: e.g. 404 unknown model/adapter, 409 adapter of another model.
        """
        if (files is None) == (pixels is None):
            raise ValueError("give either files or pixels")
        ids = drop_none({"model_id": model_id, "adapter_id": adapter_id})
        if files is not None:
            parts = [file_part(f, "file") for f in files]
            answer = self.json("POST", "/predict", files=parts, data=ids)
        else:
            values = pixels.tolist() if hasattr(pixels, "tolist") else pixels
            answer = self.json("POST", "/predict", json={"pixels": values, **ids})
        return answer["predictions"] if "predictions" in answer else [answer]

    def evaluate(
        self,
        model_id: str,
        adapter_id: str | None = None,
        test_digits: Sequence[int] | None = None,
        classes: Sequence[int] | None = None,
    ) -> Evaluation:
        """``POST /evaluate``: accuracy on the MNIST test images of ``test_digits``
        (default: the served classes), head output i read as ``classes[i]`` if given."""
        body = drop_none(
            {
                "model_id": model_id,
                "adapter_id": adapter_id,
                "test_digits": list(test_digits) if test_digits is not None else None,
                "classes": list(classes) if classes is not None else None,
            }
        )
        return self.json("POST", "/evaluate", json=body)

    def health(self) -> Health:
        """``GET /health``; raises :class:`ServiceError` (503 ``unhealthy``) when the
        database or the broker is not ready."""
        return self.json("GET", "/health")

    def wait_healthy(self, seconds: float) -> None:
        """Poll ``GET /health`` until it answers 200, for at most ``seconds``.

        Raises:
            ServiceError: still not healthy after ``seconds``.
        """
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.health()
                return
            except ServiceError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"service at {self.base_url} not healthy after {seconds} s")
            time.sleep(0.5)

    # ---------------------------------------------------------------- sweeps (issue 12)

    def submit_sweep(
        self, body: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``POST /sweeps``: a base (``base_model_id`` or a ``pretrain`` config), ``variants``
        (each ``{"kind", "config", "name"}``) and ``seeds``; returns the sweep.

        Raises:
            ServiceError: e.g. 422 for a bad grid or too many jobs, 404 unknown base model,
                409 an Idempotency-Key reused for another request.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.json("POST", "/sweeps", json=body, headers=headers)

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """``GET /sweeps/{id}``: status, progress, per-variant statistics, the jobs."""
        return self.json("GET", f"/sweeps/{sweep_id}")

    def sweep_csv(self, sweep_id: str) -> str:
        """``GET /sweeps/{id}?format=csv``: one line per variant."""
        return self.request("GET", f"/sweeps/{sweep_id}", params={"format": "csv"}).text

    def sweep_plot(self, sweep_id: str, fmt: str = "png") -> bytes:
        """``GET /sweeps/{id}/plot.png`` (or ``.svg``): the accuracy-vs-parameters figure."""
        return self.request("GET", f"/sweeps/{sweep_id}/plot.{fmt}").content

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        """``POST /sweeps/{id}/cancel``: cancel every unfinished job of the sweep."""
        return self.json("POST", f"/sweeps/{sweep_id}/cancel")
