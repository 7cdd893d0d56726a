"""``/models``: registered networks (pre-trained and fully fine-tuned)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from service.api.deps import SessionDep, SettingsDep
from service.api.errors import ErrorResponse
from service.api.pagination import PageDep
from service.api.schemas import ModelOut, Page, model_out
from service.api.strict import StrictRoute
from service.core.vocab import LEGACY_MODEL_KINDS, MODEL_KINDS
from service.db import model_records
from service.jobs.retention import delete_model

router = APIRouter(prefix="/models", tags=["models"], route_class=StrictRoute)
KindQuery = Literal[(*MODEL_KINDS, *LEGACY_MODEL_KINDS)]  # type: ignore[valid-type]


@router.get("", response_model=Page[ModelOut])
def list_models(
    session: SessionDep,
    page: PageDep,
    kind: Annotated[
        KindQuery | None,
        Query(
            description="Only models trained by this kind of job (round one's names "
            "`pretrained` and `finetuned_full` are accepted too)."
        ),
    ] = None,
) -> Page[ModelOut]:
    """List models, newest first."""
    kind = LEGACY_MODEL_KINDS.get(kind, kind) if kind else None
    items, total = model_records.list_models(
        session, kind=kind, limit=page.limit, offset=page.offset
    )
    return Page[ModelOut](
        items=[model_out(m) for m in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{model_id}", response_model=ModelOut, responses={404: {"model": ErrorResponse}})
def read_model(model_id: str, session: SessionDep) -> ModelOut:
    """One model: classes, parameter count, test accuracy, job and parent."""
    return model_out(model_records.require_model(session, model_id))


@router.delete(
    "/{model_id}",
    status_code=204,
    response_class=Response,
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse, "description": "Adapters, models or jobs depend on it."},
    },
)
def remove_model(
    model_id: str,
    session: SessionDep,
    settings: SettingsDep,
    cascade: Annotated[
        bool,
        Query(description="Also delete its adapters and the models fine-tuned from it."),
    ] = False,
) -> Response:
    """Delete the model, its files and (``cascade``) what was trained on it; 409
    ``model_in_use`` while dependents exist (unfinished jobs always: cancel them first)."""
    delete_model(session, settings, model_id, cascade)
    return Response(status_code=204)
