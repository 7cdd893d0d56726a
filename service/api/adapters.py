"""``/adapters``: registered LoRA adapters; download as a PEFT zip; delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.api.deps import SessionDep, SettingsDep
from service.api.pagination import PageDep
from service.catalog import adapter_archive, delete_adapter, require_adapter
from service.db import registry
from service.errors import ErrorResponse
from service.responses import AdapterOut, Page, adapter_out

router = APIRouter(prefix="/adapters", tags=["adapters"])
NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown adapter id."}}
ARCHIVE_SLACK_BYTES = 1 << 20  # adapter_config.json and zip overhead on top of the weights


@router.get("", response_model=Page[AdapterOut])
def list_adapters(
    session: SessionDep,
    page: PageDep,
    base_model_id: Annotated[str | None, Query(description="Only adapters of this model.")] = None,
) -> Page[AdapterOut]:
    """List adapters, newest first."""
    items, total = registry.list_adapters(
        session, base_model_id=base_model_id, limit=page.limit, offset=page.offset
    )
    return Page[AdapterOut](
        items=[adapter_out(a) for a in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{adapter_id}", response_model=AdapterOut, responses=NOT_FOUND)
def read_adapter(adapter_id: str, session: SessionDep) -> AdapterOut:
    """One adapter: r, lora_alpha, target modules, trainable parameters, base model."""
    return adapter_out(require_adapter(session, adapter_id))


@router.get(
    "/{adapter_id}/archive",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"content": {"application/zip": {}}, "description": "The PEFT directory, zipped."},
        410: {"model": ErrorResponse, "description": "The adapter's files are gone."},
    },
)
def download_adapter(adapter_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """The adapter's PEFT directory as a zip (``adapter_config.json`` + safetensors)."""
    data = adapter_archive(session, adapter_id, settings.max_adapter_bytes + ARCHIVE_SLACK_BYTES)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{adapter_id}.zip"'},
    )


@router.delete("/{adapter_id}", status_code=204, response_class=Response, responses=NOT_FOUND)
def remove_adapter(adapter_id: str, request: Request, session: SessionDep) -> Response:
    """Delete the adapter: its record, its files, and its copy in the serving cache."""
    delete_adapter(session, adapter_id, getattr(request.app.state, "predictor", None))
    return Response(status_code=204)
