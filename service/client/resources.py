"""The API's resources as the client's attributes: ``client.jobs`` (:class:`Jobs`),
``client.models`` (:class:`Models`) and ``client.adapters`` (:class:`Adapters`).

Every call raises :class:`~service.client.transport.ServiceError` on an error answer
(4xx/5xx) or when the service is unreachable, and returns the API's JSON as the typed dicts
of :mod:`service.client.types`.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from service.client.transport import (
    FileInput,
    ServiceError,
    Transport,
    drop_none,
    error_from,
    file_part,
)
from service.client.types import Adapter, Checkpoint, Event, EventPage, Job, Metrics, Model, Page
from service.core.vocab import TERMINAL_STATUSES

STREAM_READ_TIMEOUT_SECONDS = 60.0
"""A stream with nothing, not even a heartbeat, for this long is taken as dropped and
reopened (the service sends a heartbeat every few seconds)."""


class Jobs:
    """``/jobs``: submit, read, list, cancel, wait for and follow training jobs."""

    def __init__(self, transport: Transport) -> None:
        self._c = transport

    def submit(
        self,
        kind: str,
        config: dict[str, Any] | None = None,
        *,
        base_model_id: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> Job:
        """``POST /jobs``: queue a ``pretrain``, ``finetune_full`` or ``finetune_lora`` job.

        Args:
            config: the kind's fields (unset ones take the service's defaults; unknown ones
                are refused with 422).
            base_model_id: the model to fine-tune (fine-tunes only).
            idempotency_key: repeating a submit with the same key returns the job it
                created instead of another (the same key with another body: 409).
            webhook_url: where the service POSTs the job's terminal status.
        Returns:
            the queued job, its ``config`` with every default filled in.
        """
        body = drop_none(
            {
                "kind": kind,
                "config": config or {},
                "base_model_id": base_model_id,
                "webhook_url": webhook_url,
            }
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._c.json("POST", "/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> Job:
        """``GET /jobs/{id}``: status, config, times, progress, result or error."""
        return self._c.json("GET", f"/jobs/{job_id}")

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Job]:
        """``GET /jobs``: newest first, optionally only one ``status`` or ``kind``;
        ``limit`` (default 50, at most PAGE_SIZE_MAX) jobs after skipping ``offset``."""
        params = drop_none({"status": status, "kind": kind, "limit": limit, "offset": offset})
        return self._c.json("GET", "/jobs", params=params)

    def cancel(self, job_id: str) -> Job:
        """``POST /jobs/{id}/cancel``: a queued job is ``cancelled`` at once, a running one
        stops at its next step (``cancel_requested`` true); 409 once it has finished."""
        return self._c.json("POST", f"/jobs/{job_id}/cancel")

    def metrics(self, job_id: str) -> Metrics:
        """``GET /jobs/{id}/metrics``: per-epoch series (while running too), test metrics."""
        return self._c.json("GET", f"/jobs/{job_id}/metrics")

    def wait(
        self,
        job_id: str,
        *,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll ``GET /jobs/{id}`` until the job is succeeded, failed or cancelled.

        Args:
            poll_seconds: pause between reads (s).
            timeout: give up after this many seconds (default: never).
            on_progress: called with the job when its status or epoch has changed since
                the last read (first read included; the last call sees the terminal job).
        Returns:
            the terminal job; check its ``status`` (a failed job is returned, not raised).
        Raises:
            TimeoutError: not terminal after ``timeout`` s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str, int] | None = None
        while True:
            job = self.get(job_id)
            now = (job["status"], job["progress"]["epoch"])
            if on_progress is not None and now != seen:
                on_progress(job)
            seen = now
            if job["status"] in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll_seconds)

    def events(
        self, job_id: str, *, after: int | None = None, limit: int | None = None
    ) -> EventPage:
        """``GET /jobs/{id}/events``: the job's events with an id above ``after``, oldest
        first, at most ``limit``; continue with ``after=page["next_after"]`` while
        ``page["has_more"]``."""
        params = drop_none({"after": after, "limit": limit})
        return self._c.json("GET", f"/jobs/{job_id}/events", params=params)

    def stream_events(
        self, job_id: str, *, after: int | None = None, reconnects: int = 20
    ) -> Iterator[Event]:
        """Follow the job's events live (Server-Sent Events) until its terminal event.

        Yields every event with an id above ``after`` (default: from the first), each once
        and in order. When the connection drops, it reconnects with ``Last-Event-ID`` (so
        nothing is missed or repeated), up to ``reconnects`` times in a row, waiting 0.5,
        1, then 2 s in between: the default rides out about 35 s of a service restarting.
        Ends after the terminal status event (``succeeded``, ``failed``, ``cancelled``), or
        at once when the job has already ended and no event is left after ``after``.

        Raises:
            ServiceError: an error answer (404 unknown job), or the connection kept failing.
        """
        last = after
        failures = 0
        while True:
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            timeout = httpx.Timeout(self._c.timeout, read=STREAM_READ_TIMEOUT_SECONDS)
            got_any = False
            try:
                with connect_sse(
                    self._c.http, "GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise error_from(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:
                            continue
                        event: Event = json.loads(sse.data)
                        got_any, failures, last = True, 0, event["id"]
                        yield event
                        if _is_terminal(event):
                            return
                # Ended before a terminal event: is the job over (its terminal event at or
                # before ``after``), or did the server close early (e.g. shutting down)?
                if not got_any and self.get(job_id)["status"] in TERMINAL_STATUSES:
                    return
                if got_any:
                    continue
                problem: Exception = ServiceError(f"the event stream of {job_id} closed early")
            except (httpx.TransportError, SSEError) as exc:
                problem = exc
            except ServiceError as exc:
                if exc.code != "unreachable" and (exc.status or 0) < 500:
                    raise
                problem = exc  # the service is down or restarting: try again
            failures += 1
            if failures > reconnects:
                if isinstance(problem, ServiceError):
                    raise problem
                raise self._c.unreachable(problem) from problem
            time.sleep(min(0.5 * 2 ** (failures - 1), 2.0))

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """``GET /jobs/{id}/checkpoints``: the job's kept epochs with their metrics, by epoch
        (``selected``: the epoch whose weights became the job's result)."""
        return self._c.json("GET", f"/jobs/{job_id}/checkpoints")["items"]

    def publish_checkpoint(self, job_id: str, epoch: int) -> Model | Adapter:
        """``POST /jobs/{id}/checkpoints/{epoch}/publish``: register that epoch's weights as
        a model (pretrain, finetune_full) or an adapter (finetune_lora); returns it."""
        return self._c.json("POST", f"/jobs/{job_id}/checkpoints/{epoch}/publish")


def _is_terminal(event: Event) -> bool:
    return event["type"] == "status" and event["data"].get("status") in TERMINAL_STATUSES


class Models:
    """``/models``: registered networks (pre-trained and fully fine-tuned)."""

    def __init__(self, transport: Transport) -> None:
        self._c = transport

    def list(
        self, *, kind: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> Page[Model]:
        """``GET /models``: newest first, optionally one ``kind`` (pretrain, finetune_full)."""
        params = drop_none({"kind": kind, "limit": limit, "offset": offset})
        return self._c.json("GET", "/models", params=params)

    def get(self, model_id: str) -> Model:
        """``GET /models/{id}``: classes, parameter count, test accuracy, job, parent."""
        return self._c.json("GET", f"/models/{model_id}")


class Adapters:
    """``/adapters``: LoRA adapters: list, read, import (PEFT files), download, delete."""

    def __init__(self, transport: Transport) -> None:
        self._c = transport

    def list(
        self,
        *,
        base_model_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Adapter]:
        """``GET /adapters``: newest first, optionally only those of ``base_model_id``."""
        params = drop_none({"base_model_id": base_model_id, "limit": limit, "offset": offset})
        return self._c.json("GET", "/adapters", params=params)

    def get(self, adapter_id: str) -> Adapter:
        """``GET /adapters/{id}``: r, lora_alpha, target modules, trainable parameters."""
        return self._c.json("GET", f"/adapters/{adapter_id}")

    def import_(
        self,
        base_model_id: str,
        files: Sequence[FileInput],
        classes: Sequence[int] | None = None,
    ) -> Adapter:
        """``POST /adapters``: register a PEFT LoRA adapter trained elsewhere.

        Args:
            base_model_id: the model it was trained on.
            files: ``adapter_config.json`` and ``adapter_model.safetensors`` (a PEFT
                directory's two files), or one ``.zip`` holding them (as :meth:`download`
                writes). Pickle formats (``.bin``, ``.pt``) are refused unopened (415).
            classes: the digit of each head output (default: the base model's classes).
        Raises:
            ServiceError: 404 unknown base model; 413 too large; 422 not a valid adapter.
        """
        parts = [file_part(f, "files") for f in files]
        data = {"base_model_id": base_model_id}
        if classes is not None:
            data["classes"] = ",".join(str(int(c)) for c in classes)
        return self._c.json("POST", "/adapters", files=parts, data=data)

    def download(self, adapter_id: str, path: str | os.PathLike[str]) -> Path:
        """``GET /adapters/{id}/archive``: save the adapter's PEFT directory as a zip.

        Args:
            path: the file to write, or a directory (then ``<id>.zip`` in it): one that
                exists, or a path ending in ``/`` (made, parents too).
        Returns:
            the file written; it appears whole or not at all (written beside, then renamed).
        Raises:
            ServiceError: 404 unknown adapter; 410 its files are gone.
        """
        target = Path(path)
        if target.is_dir() or os.fspath(path).endswith(("/", os.sep)):
            target.mkdir(parents=True, exist_ok=True)
            target = target / f"{adapter_id}.zip"
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            with tmp.open("xb") as out:  # the usual permissions (mkstemp's are 0600)
                try:
                    with self._c.http.stream("GET", f"/adapters/{adapter_id}/archive") as resp:
                        if resp.status_code >= 400:
                            resp.read()
                            raise error_from(resp)
                        for chunk in resp.iter_bytes():
                            out.write(chunk)
                except httpx.TransportError as exc:
                    raise self._c.unreachable(exc) from exc
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def delete(self, adapter_id: str) -> None:
        """``DELETE /adapters/{id}``: its record and files; serving forgets it at once."""
        self._c.request("DELETE", f"/adapters/{adapter_id}")
