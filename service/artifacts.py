"""Where artifacts live under ``ARTIFACT_DIR``, and small file helpers (no FastAPI, no torch).

Layout::

    {artifact_dir}/models/{model_id}/        model.safetensors + config.json
    {artifact_dir}/adapters/{adapter_id}/    adapter_config.json + adapter_model.safetensors (PEFT)
    {artifact_dir}/checkpoints/{job_id}/     training_state.safetensors (resumable, per epoch)

Records store absolute paths, so every process (API, workers) sharing the artifact volume
at the same mount point reads the same files.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

from service.config import Settings

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


def zip_directory(directory: Path, max_bytes: int) -> bytes:
    """The regular files directly in ``directory`` as an in-memory zip (deflated).

    Args:
        max_bytes: refuse directories whose files add up to more than this (bytes).
    Raises:
        FileNotFoundError: ``directory`` does not exist.
        ValueError: the files are larger than ``max_bytes``.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist")
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.is_symlink())
    total = sum(p.stat().st_size for p in files)
    if total > max_bytes:
        raise ValueError(f"{directory} holds {total} bytes, more than {max_bytes}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, arcname=path.name)
    return buffer.getvalue()


def remove_tree(directory: str | Path) -> None:
    """Delete a directory and everything in it; a missing directory is fine."""
    shutil.rmtree(directory, ignore_errors=True)
