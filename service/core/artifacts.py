"""The artifact store: where models, adapters and checkpoints live, the one interface every
process uses to find, write and remove them (a local directory, ``ARTIFACT_DIR``, for now; an
object store can be put behind these functions). No FastAPI, no torch.

Layout::

    {artifact_dir}/models/{model_id}/        model.safetensors + config.json
    {artifact_dir}/adapters/{adapter_id}/    adapter_config.json + adapter_model.safetensors (PEFT)
    {artifact_dir}/checkpoints/{job_id}/     training_state.safetensors (resumable, per epoch)
    {artifact_dir}/checkpoints/{job_id}/epoch-{N}/   kept epochs: a model or a PEFT adapter

Records store absolute paths, so every process (API, workers) sharing the artifact volume
at the same mount point reads the same files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from service.core.settings import Settings

TRAINING_STATE_FILE = "training_state.safetensors"


def model_dir(settings: Settings, model_id: str) -> Path:
    """Absolute directory of a model's weights."""
    return (settings.artifact_dir / "models" / model_id).resolve()


def adapter_dir(settings: Settings, adapter_id: str) -> Path:
    """Absolute PEFT directory of an adapter."""
    return (settings.artifact_dir / "adapters" / adapter_id).resolve()


def checkpoint_dir(settings: Settings, job_id: str) -> Path:
    """Absolute directory of a job's resumable training state."""
    return (settings.artifact_dir / "checkpoints" / job_id).resolve()


def checkpoint_file(settings: Settings, job_id: str) -> Path:
    """The training-state file a job resumes from (written after every epoch)."""
    return checkpoint_dir(settings, job_id) / TRAINING_STATE_FILE


def epoch_checkpoint_dir(settings: Settings, job_id: str, epoch: int) -> Path:
    """Absolute directory of a kept epoch's weights (a model, or a PEFT adapter)."""
    return checkpoint_dir(settings, job_id) / f"epoch-{epoch:04d}"


def remove_tree(directory: str | Path) -> None:
    """Delete a directory and everything in it; a missing directory is fine."""
    shutil.rmtree(directory, ignore_errors=True)
