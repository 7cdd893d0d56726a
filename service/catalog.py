"""Models and adapters: look-ups that answer 404, the adapter archive, adapter deletion."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.artifacts import remove_tree, zip_directory
from service.db import registry
from service.db.tables import AdapterRecord, ModelRecord
from service.errors import ApiError, not_found

log = logging.getLogger(__name__)


def require_model(session: Session, model_id: str) -> ModelRecord:
    """The model record. Raises ApiError 404 ``model_not_found``."""
    record = registry.get_model(session, model_id)
    if record is None:
        raise not_found("model", model_id)
    return record


def require_adapter(session: Session, adapter_id: str) -> AdapterRecord:
    """The adapter record. Raises ApiError 404 ``adapter_not_found``."""
    record = registry.get_adapter(session, adapter_id)
    if record is None:
        raise not_found("adapter", adapter_id)
    return record


def adapter_archive(session: Session, adapter_id: str, max_bytes: int) -> bytes:
    """The adapter's PEFT directory as zip bytes (``adapter_config.json``,
    ``adapter_model.safetensors``), loadable with ``peft.PeftModel.from_pretrained`` once
    unpacked.

    Args:
        max_bytes: largest directory served (bytes; ``MAX_ADAPTER_BYTES`` plus slack).
    Raises:
        ApiError: 404 ``adapter_not_found``; 410 ``adapter_files_missing`` when the record
            exists but its directory is gone or too large to serve.
    """
    record = require_adapter(session, adapter_id)
    try:
        return zip_directory(Path(record.path), max_bytes)
    except (FileNotFoundError, ValueError) as exc:
        raise ApiError(
            410, "adapter_files_missing", f"Adapter {adapter_id}'s files are unavailable: {exc}"
        ) from exc


def delete_adapter(session: Session, adapter_id: str, predictor: Any | None = None) -> None:
    """Delete the adapter's record (committed first), then its files, then evict it from
    the serving cache (``predictor.evict(adapter_id)``) when a predictor is given.

    Raises:
        ApiError: 404 ``adapter_not_found``.
    """
    record = registry.delete_adapter(session, adapter_id)
    if record is None:
        raise not_found("adapter", adapter_id)
    session.commit()
    remove_tree(record.path)
    if predictor is not None:
        predictor.evict(adapter_id)
    log.info("deleted adapter %s (%s)", adapter_id, record.path)
