"""Adapter records: registered LoRA adapters (trained here or imported) and their look-ups.

``register_adapter`` and ``delete_adapter`` only add/delete and flush: the caller commits.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.lora import LoraConfig
from service.core.errors import not_found
from service.core.vocab import AdapterSource
from service.db.paging import page
from service.db.tables import AdapterRecord


def register_adapter(
    session: Session,
    *,
    adapter_id: str,
    base_model_id: str,
    job_id: str | None,
    source: AdapterSource,
    lora_config: LoraConfig,
    trainable_parameters: int,
    classes: list[int],
    test_accuracy: float | None,
    path: str,
    precision: str | None = None,
) -> AdapterRecord:
    """Add an adapter record; flushes, the caller commits.

    Args:
        lora_config: the adapter's hyper-parameters (``r``, ``lora_alpha``,
            ``target_modules``, ``lora_dropout``, ``use_rslora``).
        path: absolute PEFT directory (``adapter_config.json``, ``adapter_model.safetensors``).
        precision: the matmul precision it was trained in (fp32, bf16), None if imported.
    Raises:
        sqlalchemy.exc.IntegrityError: duplicate id or unknown base model (on flush).
    """
    record = AdapterRecord(
        id=adapter_id,
        base_model_id=base_model_id,
        job_id=job_id,
        source=source,
        r=lora_config.r,
        lora_alpha=lora_config.lora_alpha,
        use_rslora=lora_config.use_rslora,
        lora_dropout=lora_config.lora_dropout,
        target_modules=list(lora_config.target_modules),
        trainable_parameters=int(trainable_parameters),
        classes=list(classes),
        test_accuracy=test_accuracy,
        path=str(path),
        precision=precision,
    )
    session.add(record)
    session.flush()
    return record


def get_adapter(session: Session, adapter_id: str) -> AdapterRecord | None:
    """The adapter record, or None."""
    return session.get(AdapterRecord, adapter_id)


def require_adapter(session: Session, adapter_id: str, param: str | None = None) -> AdapterRecord:
    """The adapter record. Raises ApiError 404 ``adapter_not_found`` (naming ``param``)."""
    record = get_adapter(session, adapter_id)
    if record is None:
        raise not_found("adapter", adapter_id, param)
    return record


def list_adapters(
    session: Session, *, base_model_id: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[AdapterRecord], int]:
    """Adapters, newest first, and the total (only those of ``base_model_id`` when given)."""
    stmt = select(AdapterRecord).order_by(AdapterRecord.created_at.desc(), AdapterRecord.id)
    if base_model_id is not None:
        stmt = stmt.where(AdapterRecord.base_model_id == base_model_id)
    return page(session, stmt, limit, offset)


def adapters_by_id(session: Session, adapter_ids: Iterable[str]) -> dict[str, AdapterRecord]:
    """The records of ``adapter_ids`` that exist, by id (one query)."""
    ids = sorted(set(adapter_ids))
    if not ids:
        return {}
    rows = session.scalars(select(AdapterRecord).where(AdapterRecord.id.in_(ids)))
    return {r.id: r for r in rows}


def delete_adapter(session: Session, adapter_id: str) -> AdapterRecord | None:
    """Delete the adapter record (flush; caller commits, then removes its files).

    Returns:
        The deleted record (its ``path`` still readable), or None when there was none.
    """
    record = session.get(AdapterRecord, adapter_id)
    if record is not None:
        session.delete(record)
        session.flush()
    return record
