"""The device a worker trains on: what a job asks for (``auto`` | ``cpu`` | ``cuda``),
what this host has, and the start-up check of a GPU worker."""

from __future__ import annotations

from typing import Any

from service.core.settings import Settings
from worker.build import JobFailure


def resolve_device(requested: str) -> tuple[Any, str]:
    """``(torch.device, its name)`` for a job's ``device``: ``auto`` = CUDA when available,
    else CPU; the name is the GPU model (``torch.cuda.get_device_name``) or ``cpu``.

    Raises:
        JobFailure: ``cuda_unavailable`` for a ``cuda`` job on a host without CUDA.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise JobFailure(
            "cuda_unavailable", 'The job asks for "device": "cuda"; this worker has no CUDA.'
        )
    use_cuda = has_cuda and requested != "cpu"
    device = torch.device("cuda" if use_cuda else "cpu")
    return device, torch.cuda.get_device_name(device) if use_cuda else "cpu"


def startup_problem(settings: Settings, cuda_available: bool | None = None) -> str | None:
    """Why this worker must not start (None when it may): it would consume
    ``GPU_TRAINING_QUEUE`` (``WORKER_DEVICE=cuda``, or ``TRAINING_QUEUE`` set to it) on a
    host where ``torch.cuda.is_available()`` is false."""
    from service.jobs.queue import worker_queues

    if settings.gpu_training_queue not in worker_queues(settings):
        return None
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return None
    return (
        f"this worker would consume the GPU queue {settings.gpu_training_queue!r} "
        f"(WORKER_DEVICE={settings.worker_device}, TRAINING_QUEUE={settings.training_queue}) "
        "but torch finds no CUDA device: run it on a GPU host with the NVIDIA runtime, or "
        "set WORKER_DEVICE=cpu and TRAINING_QUEUE to the ordinary queue."
    )
