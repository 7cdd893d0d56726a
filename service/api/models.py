"""``/models``: registered networks (pre-trained and fully fine-tuned)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from service.api.deps import SessionDep
from service.api.pagination import PageDep
from service.catalog import require_model
from service.db import registry
from service.errors import ErrorResponse
from service.responses import ModelOut, Page, model_out

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=Page[ModelOut])
def list_models(
    session: SessionDep,
    page: PageDep,
    kind: Annotated[
        Literal["pretrained", "finetuned_full"] | None, Query(description="Only this kind.")
    ] = None,
) -> Page[ModelOut]:
    """List models, newest first."""
    items, total = registry.list_models(session, kind=kind, limit=page.limit, offset=page.offset)
    return Page[ModelOut](
        items=[model_out(m) for m in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{model_id}", response_model=ModelOut, responses={404: {"model": ErrorResponse}})
def read_model(model_id: str, session: SessionDep) -> ModelOut:
    """One model: classes, parameter count, test accuracy, job and parent."""
    return model_out(require_model(session, model_id))
