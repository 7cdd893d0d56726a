"""Export: an adapter's PEFT directory as a zip, loadable with
``peft.PeftModel.from_pretrained`` once unpacked."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from sqlalchemy.orm import Session

from service.core import store
from service.core.errors import ApiError, artifact_unavailable
from service.core.settings import Settings, get_settings
from service.db.adapter_records import require_adapter

ARCHIVE_SLACK_BYTES = 1 << 20  # adapter_config.json and zip overhead on top of the weights


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


def adapter_archive(
    session: Session, adapter_id: str, max_adapter_bytes: int, settings: Settings | None = None
) -> bytes:
    """The adapter's PEFT directory as zip bytes (``adapter_config.json``,
    ``adapter_model.safetensors``).

    Args:
        max_adapter_bytes: ``MAX_ADAPTER_BYTES``; directories over it plus
            :data:`ARCHIVE_SLACK_BYTES` are not served (bytes).
    Raises:
        ApiError: 404 ``adapter_not_found``; 410 ``adapter_files_missing`` when the record
            exists but its directory is gone or too large to serve.
    """
    record = require_adapter(session, adapter_id)
    try:
        directory = store.fetch(settings or get_settings(), record.path)
    except store.ArtifactUnavailable as exc:
        if exc.code != "artifact_missing":  # corrupt, or the store unreachable: 503
            raise artifact_unavailable("adapter", adapter_id, exc) from exc
        directory = Path(record.path)  # gone: 410 below
    try:
        return zip_directory(directory, max_adapter_bytes + ARCHIVE_SLACK_BYTES)
    except (FileNotFoundError, ValueError) as exc:
        raise ApiError(
            410, "adapter_files_missing", f"Adapter {adapter_id}'s files are unavailable: {exc}"
        ) from exc
