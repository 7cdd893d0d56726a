"""POST /evaluate: test-set accuracy of a model (optionally with an adapter) on chosen digits.

Used by ``lora-service compare`` to measure what a model *as served* still knows (for example
the base's 0-4 accuracy, which LoRA leaves untouched, against what full fine-tuning forgot).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from service.db.session import session_factory
from service.db.tables import AdapterRecord, ModelRecord
from service.errors import ApiError, ErrorResponse, artifact_unavailable, not_found

router = APIRouter(tags=["evaluate"])


class EvaluateRequest(BaseModel):
    """What to evaluate, on which digits of the official MNIST test set."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=64)
    adapter_id: str | None = Field(None, min_length=1, max_length=64)
    digits: list[int] | None = Field(
        None, min_length=1, max_length=10, description="Test digits (default: the served classes)."
    )
    head_classes: list[int] | None = Field(
        None,
        min_length=2,
        max_length=10,
        description="Read head output i as digit head_classes[i] instead of the record's classes "
        "(e.g. a model fine-tuned on 5-9 read through its parent's 0-4 head: the seed "
        "notebook's measure of forgetting).",
    )

    @field_validator("digits", "head_classes")
    @classmethod
    def _digits(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(set(v)) != len(v) or any(d < 0 or d > 9 for d in v)):
            raise ValueError("digits must be distinct integers in 0..9")
        return v


class EvaluateResponse(BaseModel):
    """Accuracy (fraction in [0, 1]) on ``n_samples`` test images, and errors per digit."""

    model_id: str
    adapter_id: str | None
    digits: list[int]
    head_classes: list[int]
    n_samples: int
    accuracy: float
    per_digit_errors: dict[str, int]


@lru_cache(maxsize=2)
def _mnist_test(data_dir: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The official test set: normalised (10000, 784) float32 images and (10000,) digits."""
    from torchvision.datasets import MNIST

    from models.data import normalize_images

    ds = MNIST(root=data_dir, train=False, download=download)
    return normalize_images(ds.data), ds.targets.clone()


def _db(request: Request):  # noqa: ANN202 (generator dependency)
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(_db)]


@router.post(
    "/evaluate",
    response_model=EvaluateResponse,
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
def evaluate(body: EvaluateRequest, request: Request, db: SessionDep) -> EvaluateResponse:
    """Accuracy of a model (and adapter) on the MNIST test images of ``digits``."""
    from models.adapter_io import load_adapter
    from models.checkpoint import load_model
    from models.lora import forward_with_adapters

    settings = request.app.state.settings
    record = db.get(ModelRecord, body.model_id)
    if record is None:
        raise not_found("model", body.model_id, "model_id")
    served_classes = list(record.classes)
    adapter = None
    if body.adapter_id is not None:
        adapter_rec = db.get(AdapterRecord, body.adapter_id)
        if adapter_rec is None:
            raise not_found("adapter", body.adapter_id, "adapter_id")
        if adapter_rec.base_model_id != record.id:
            raise ApiError(
                409,
                "adapter_model_mismatch",
                f"Adapter {adapter_rec.id!r} belongs to model {adapter_rec.base_model_id!r}, "
                f"not {record.id!r}.",
                "adapter_id",
            )
        served_classes = list(adapter_rec.classes)
    head = body.head_classes or served_classes
    if len(head) != len(served_classes):
        raise ApiError(
            422,
            "validation_error",
            f"head_classes must have {len(served_classes)} digits (the head's size).",
            "head_classes",
        )
    digits = body.digits or served_classes
    try:
        images, labels = _mnist_test(str(Path(settings.data_dir)), settings.mnist_download)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ApiError(503, "data_unavailable", f"MNIST test set unavailable: {exc}") from exc
    mask = torch.isin(labels, torch.tensor(digits))
    x, y = images[mask], labels[mask]
    try:
        model, meta = load_model(Path(record.path))
    except (OSError, ValueError) as exc:  # files gone or corrupt (CheckpointError)
        raise artifact_unavailable("model", record.id, exc) from exc
    if body.adapter_id is not None:
        try:
            adapter = load_adapter(
                Path(adapter_rec.path), meta.config, max_bytes=settings.max_adapter_bytes
            )
        except (OSError, ValueError) as exc:  # files gone or corrupt (AdapterError)
            raise artifact_unavailable("adapter", adapter_rec.id, exc) from exc
    model.eval()
    with torch.inference_mode():
        logits = forward_with_adapters(model, x, [adapter] * len(x))
    predicted = torch.tensor(head)[logits.argmax(dim=1)]
    wrong = predicted != y
    per_digit = {str(d): int(wrong[y == d].sum()) for d in digits}
    return EvaluateResponse(
        model_id=record.id,
        adapter_id=body.adapter_id,
        digits=digits,
        head_classes=head,
        n_samples=int(len(y)),
        accuracy=float(1.0 - wrong.float().mean()) if len(y) else 0.0,
        per_digit_errors=per_digit,
    )
