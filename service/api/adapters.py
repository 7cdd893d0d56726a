"""``/adapters``: import a PEFT LoRA adapter trained elsewhere, list and read registered
adapters, download one as a PEFT zip, delete one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from service.adapters.archive import adapter_archive
from service.adapters.delete import delete_adapter
from service.adapters.upload import Upload, import_adapter
from service.api.deps import SessionDep, SettingsDep
from service.api.errors import ErrorResponse
from service.api.pagination import PageDep
from service.api.schemas import AdapterOut, Page, adapter_out
from service.api.strict import StrictRoute
from service.core.vocab import MAX_ID_LENGTH
from service.db import adapter_records

router = APIRouter(prefix="/adapters", tags=["adapters"], route_class=StrictRoute)
NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown adapter id."}}


@router.get("", response_model=Page[AdapterOut])
def list_adapters(
    session: SessionDep,
    page: PageDep,
    base_model_id: Annotated[str | None, Query(description="Only adapters of this model.")] = None,
) -> Page[AdapterOut]:
    """List adapters, newest first."""
    items, total = adapter_records.list_adapters(
        session, base_model_id=base_model_id, limit=page.limit, offset=page.offset
    )
    return Page[AdapterOut](
        items=[adapter_out(a) for a in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{adapter_id}", response_model=AdapterOut, responses=NOT_FOUND)
def read_adapter(adapter_id: str, session: SessionDep) -> AdapterOut:
    """One adapter: r, lora_alpha, target modules, trainable parameters, base model."""
    return adapter_out(adapter_records.require_adapter(session, adapter_id))


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
    data = adapter_archive(session, adapter_id, settings.max_adapter_bytes, settings)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{adapter_id}.zip"'},
    )


@router.delete("/{adapter_id}", status_code=204, response_class=Response, responses=NOT_FOUND)
def remove_adapter(adapter_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete the adapter: its record and its files (serving forgets it at once)."""
    delete_adapter(session, adapter_id, settings)
    return Response(status_code=204)


@router.post(
    "",
    status_code=201,
    response_model=AdapterOut,
    responses={
        404: {"model": ErrorResponse, "description": "Unknown base model."},
        413: {"model": ErrorResponse, "description": "Upload or unpacked files too large."},
        415: {"model": ErrorResponse, "description": "A pickle format (.bin, .pt, ...)."},
        422: {"model": ErrorResponse, "description": "Files that do not form a valid adapter."},
    },
)
def import_adapter_route(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    base_model_id: Annotated[
        str,
        Form(
            min_length=1, max_length=MAX_ID_LENGTH, description="Model the adapter was trained on."
        ),
    ],
    files: Annotated[
        list[UploadFile],
        File(
            description="`adapter_config.json` and `adapter_model.safetensors` (the PEFT "
            "directory's two files), or one `.zip` holding exactly those two. Safetensors "
            "only: pickle formats (`.bin`, `.pt`, ...) are refused unopened."
        ),
    ],
    classes: Annotated[
        str | None,
        Form(
            max_length=64,
            description="Comma-separated digit of each head output, e.g. `5,6,7,8,9`; "
            "default: the base model's classes.",
        ),
    ] = None,
) -> AdapterOut:
    """Register an uploaded PEFT LoRA adapter for a base model (validated, stored atomically)."""
    uploads = [Upload(f.filename or "", f.file) for f in files]
    record = import_adapter(
        settings, session, base_model_id=base_model_id, uploads=uploads, classes=classes
    )
    response.headers["Location"] = f"/adapters/{record.id}"
    return adapter_out(record)
