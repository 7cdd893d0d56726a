"""``POST /adapters``: import a LoRA adapter trained elsewhere (e.g. with peft).

The checks and storage live in :mod:`service.adapter_upload`; this route parses the
multipart form, calls it and shapes the answer.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from service.adapter_upload import Upload, import_adapter
from service.api.deps import SessionDep, SettingsDep
from service.errors import ErrorResponse
from service.responses import AdapterOut, adapter_out

router = APIRouter(prefix="/adapters", tags=["adapters"])


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
        str, Form(min_length=1, max_length=64, description="Model the adapter was trained on.")
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
