"""``POST /evaluate``: test-set accuracy of a model (optionally with an adapter) as served.

The work is :meth:`service.serving.predictor.Predictor.evaluate` (same records, caches and
forward pass as ``/predict``); this route parses, calls it and shapes the answer.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from service.api.deps import get_predictor
from service.api.errors import ErrorResponse
from service.api.strict import StrictRoute
from service.core.vocab import MAX_ID_LENGTH, DigitList, refuse_both_names

router = APIRouter(tags=["evaluate"], route_class=StrictRoute)


class EvaluateRequest(BaseModel):
    """What to evaluate, on which digits of the official MNIST test set."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    adapter_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    test_digits: DigitList | None = Field(
        None,
        min_length=1,
        max_length=10,
        validation_alias=AliasChoices("test_digits", "digits"),
        description="Digits whose test images are used (default: the served classes; "
        "`digits` is accepted as the old name).",
    )
    classes: DigitList | None = Field(
        None,
        min_length=2,
        max_length=10,
        validation_alias=AliasChoices("classes", "head_classes"),
        description="Read head output i as digit classes[i] instead of the record's classes "
        "(e.g. a model fine-tuned on 5-9 read through its parent's 0-4 head: the seed "
        "notebook's measure of forgetting; `head_classes` is accepted as the old name).",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_name_each(cls, data: object) -> object:
        refuse_both_names(data, {"test_digits": "digits", "classes": "head_classes"})
        return data


class EvaluateResponse(BaseModel):
    """Accuracy (fraction in [0, 1]) on ``n_samples`` test images, and errors per digit."""

    model_id: str
    adapter_id: str | None
    test_digits: list[int] = Field(description="Digits whose test images were used.")
    classes: list[int] = Field(description="How head output i was read: digit classes[i].")
    n_samples: int
    accuracy: float
    per_digit_errors: dict[str, int]


@router.post(
    "/evaluate",
    response_model=EvaluateResponse,
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def evaluate(body: EvaluateRequest, request: Request) -> EvaluateResponse:
    """Accuracy of a model (and adapter) on the MNIST test images of ``test_digits``."""
    result = await get_predictor(request).evaluate(
        body.model_id, body.adapter_id, body.test_digits, body.classes
    )
    return EvaluateResponse(**asdict(result))
