"""Model records: registered networks (pre-trained or fully fine-tuned) and their look-ups.

"Model" means a neural network (``models/``); the row describing one is a *record*.
``register_model`` only adds and flushes: the caller commits, so a job is ``succeeded`` in
the same transaction that registers what it produced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.errors import not_found
from service.core.vocab import ModelKind
from service.db.paging import page
from service.db.tables import ModelRecord


def register_model(
    session: Session,
    *,
    model_id: str,
    kind: ModelKind,
    job_id: str | None,
    parent_id: str | None,
    classes: list[int],
    architecture: dict[str, Any],
    n_parameters: int,
    test_accuracy: float | None,
    path: str,
    precision: str | None = None,
) -> ModelRecord:
    """Add a model record; flushes, the caller commits.

    Args:
        kind: the kind of job that trained it (``pretrain`` or ``finetune_full``).
        classes: digit of each head output, in order.
        architecture: ``MLPConfig.to_dict()`` of the stored network.
        path: absolute directory holding ``model.safetensors`` + ``config.json``.
        precision: the matmul precision it was trained in (fp32, bf16), None if unknown.
    Raises:
        sqlalchemy.exc.IntegrityError: ``model_id`` already exists (on flush).
    """
    record = ModelRecord(
        id=model_id,
        kind=kind,
        job_id=job_id,
        parent_id=parent_id,
        classes=list(classes),
        architecture=dict(architecture),
        n_parameters=int(n_parameters),
        test_accuracy=test_accuracy,
        path=str(path),
        precision=precision,
    )
    session.add(record)
    session.flush()
    return record


def get_model(session: Session, model_id: str) -> ModelRecord | None:
    """The model record, or None."""
    return session.get(ModelRecord, model_id)


def require_model(session: Session, model_id: str, param: str | None = None) -> ModelRecord:
    """The model record. Raises ApiError 404 ``model_not_found`` (naming ``param``)."""
    record = get_model(session, model_id)
    if record is None:
        raise not_found("model", model_id, param)
    return record


def list_models(
    session: Session, *, kind: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[ModelRecord], int]:
    """Models, newest first, and the total matching ``kind`` (all kinds when None)."""
    stmt = select(ModelRecord).order_by(ModelRecord.created_at.desc(), ModelRecord.id)
    if kind is not None:
        stmt = stmt.where(ModelRecord.kind == kind)
    return page(session, stmt, limit, offset)


def models_by_id(session: Session, model_ids: Iterable[str]) -> dict[str, ModelRecord]:
    """The records of ``model_ids`` that exist, by id (one query)."""
    ids = sorted(set(model_ids))
    if not ids:
        return {}
    rows = session.scalars(select(ModelRecord).where(ModelRecord.id.in_(ids)))
    return {r.id: r for r in rows}


def newest_pretrained_id(session: Session) -> str | None:
    """The id of the newest ``pretrain`` model, or None when there is none."""
    stmt = (
        select(ModelRecord.id)
        .where(ModelRecord.kind == "pretrain")
        .order_by(ModelRecord.created_at.desc(), ModelRecord.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()
