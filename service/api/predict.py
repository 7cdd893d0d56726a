"""``POST /predict``: digits from images with a base model and an optional LoRA adapter.

Two request forms (see the OpenAPI ``requestBody``):

- ``multipart/form-data``: field ``file`` (repeat it for several images; PNG, JPEG, GIF,
  BMP or WebP, any size and mode), optional text fields ``model_id`` and ``adapter_id``.
- ``application/json``: ``{"pixels": [[...28 values 0-255...] x 28], "model_id": ...,
  "adapter_id": ...}``; ``pixels`` may also be a list of such arrays.
- ``application/octet-stream`` (issue 16: no decoding, the cheapest form): N x 784 bytes,
  each image 28 x 28 uint8 pixels row-major; ``model_id``/``adapter_id`` in the query.
  Exactly 784 bytes answer one object, more answer ``{"predictions": [...]}``.

``model_id`` and ``adapter_id`` may also be query parameters (``/predict?adapter_id=...``),
with either body; given both ways they must agree (else 422 ``conflicting_parameter``).
``include_image=true`` (query, either body) adds to each answer the 28 x 28 image the model
saw after the service's preprocessing (``image``: 28 rows of 28 integers 0-255).
Any other query parameter or form field is refused (422 ``unknown_parameter``).

Answer: one image (one ``file``, or a single 28 x 28 ``pixels``) gives one
:class:`PredictionOut` object; several (repeated ``file``, or a list of arrays, even of
length one) give ``{"predictions": [...]}`` in request order.

Also ``GET /predict/ping`` (a constant: the benchmark's HTTP ceiling) and
``GET /predict/stats`` (adapter cache and micro-batching counters).
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.deps import get_predictor
from service.api.errors import ErrorResponse
from service.api.predict_json import PredictRequest, read_json_body
from service.api.strict import StrictRoute, refuse_unknown
from service.core.errors import ApiError
from service.core.settings import Settings
from service.core.vocab import MAX_ID_LENGTH
from service.serving.images import (
    decode_upload,
    raw_to_images,
    to_model_input,
)

router = APIRouter(prefix="/predict", tags=["predict"], route_class=StrictRoute)

_FORM_FIELDS = frozenset({"file", "model_id", "adapter_id"})

_QUERY_PARAMETERS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "string", "maxLength": MAX_ID_LENGTH},
        "description": f"{what}, as in the body. Given in both places, the values must agree.",
    }
    for name, what in (
        ("model_id", "Base model (default: the newest pre-trained one)"),
        ("adapter_id", "LoRA adapter of that model (default: none)"),
    )
] + [
    {
        "name": "include_image",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "Add `image` to each answer: the 28 x 28 image the model saw after "
        "preprocessing (rows of 28 integers 0-255), e.g. to show it beside the answer.",
    }
]
"""Declared in the OpenAPI operation rather than as FastAPI ``Query`` parameters: solving
them cost ~12 % of ``/predict``'s throughput (benchmarks/bench_predict.py). StrictRoute
accepts what the operation documents (:func:`service.api.strict.documented_query_names`)."""


class PredictionOut(BaseModel):
    """One image's answer: the digit and every class probability of the head used."""

    digit: int = Field(description="The most probable digit.")
    probabilities: dict[str, float] = Field(
        description="Digit (as a string) -> probability, over the classes of the model "
        "(or of the adapter when one is used)."
    )
    model_id: str
    adapter_id: str | None
    image: list[list[int]] | None = Field(
        None,
        description="Only with `include_image=true`: the 28 x 28 image the model saw (rows of "
        "28 integers 0-255, light digit on dark), after the service's preprocessing.",
    )


class PredictionBatchOut(BaseModel):
    """Answers for several images, in request order."""

    predictions: list[PredictionOut]


class PingOut(BaseModel):
    """The constant answer of ``GET /predict/ping``."""

    ok: bool = True


class CacheStatsOut(BaseModel):
    """LRU cache counters (adapters or base models); latencies in milliseconds."""

    capacity: int
    resident: list[str]
    hits: int
    misses: int
    loads: int
    load_failures: int
    evictions: int
    peak_resident: int
    last_load_ms: float | None
    max_load_ms: float | None
    total_load_ms: float


class PredictorStatsOut(BaseModel):
    """Predictor counters since start-up; latencies in milliseconds."""

    adapter_cache: CacheStatsOut
    model_cache: CacheStatsOut
    models_loaded: list[str]
    batches: int
    samples: int
    mean_batch: float
    largest_batch: int
    forward_passes: int
    mean_forward_ms: float
    window_ms: float
    max_batch: int


_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "An image (PNG, JPEG, GIF, BMP, WebP). Repeat the field for "
            "several images.",
        },
        "model_id": {"type": "string", "maxLength": 64},
        "adapter_id": {"type": "string", "maxLength": 64},
    },
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "N x 784 bytes: 28 x 28 uint8 pixels per image, row-major.",
            },
        },
    }
}


@router.post(
    "",
    response_model=PredictionOut | PredictionBatchOut,
    summary="Predict digits with a base model and an optional LoRA adapter",
    openapi_extra={**_REQUEST_BODY, "parameters": _QUERY_PARAMETERS},
    responses={
        409: {"model": ErrorResponse, "description": "The adapter belongs to another model."},
        413: {"model": ErrorResponse, "description": "Body or image over the size limits."},
        415: {"model": ErrorResponse, "description": "Not JSON or multipart, or not an image."},
        503: {"model": ErrorResponse, "description": "Artifact unreadable, or shutting down."},
    },
)
async def predict(request: Request) -> Response:
    """Predict the digit of one or several images (multipart ``file`` or JSON ``pixels``).

    ``model_id``/``adapter_id`` come from the body or the query string (see the module).
    """
    settings: Settings = request.app.state.settings
    images, body_model_id, body_adapter_id, batch = await read_predict_request(request, settings)
    query = request.query_params
    model_id = merge_parameter("model_id", query.get("model_id"), body_model_id)
    adapter_id = merge_parameter("adapter_id", query.get("adapter_id"), body_adapter_id)
    with_image = "include_image" in query and parse_flag("include_image", query["include_image"])
    predictor = get_predictor(request)
    predictions = await predictor.predict(to_model_input(images), model_id, adapter_id)
    answers = [p.__dict__ for p in predictions]
    if with_image:
        answers = [{**a, "image": img.tolist()} for a, img in zip(answers, images, strict=True)]
    doc = {"predictions": answers} if batch else answers[0]
    # Built from typed dataclasses that match the response models: serialised directly
    # (FastAPI's response validation would cost more than the rest of the handler), with
    # orjson (0.6 us for one answer vs 10.5 us with json.dumps).
    return Response(orjson.dumps(doc), media_type="application/json")


@router.get("/ping", response_model=PingOut, summary="Constant answer (HTTP ceiling)")
async def ping() -> dict[str, bool]:
    """Answer a constant without touching the predictor (benchmark baseline)."""
    return {"ok": True}


@router.get("/stats", response_model=PredictorStatsOut, summary="Predictor counters")
async def stats(request: Request) -> dict[str, Any]:
    """Adapter cache (resident ids, hits, loads, evictions, load ms) and batching counters."""
    return get_predictor(request).stats()


def parse_flag(name: str, value: str) -> bool:
    """A boolean query value: ``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off``
    (any case).

    Raises:
        ApiError: 422 ``validation_error`` (``param`` = ``name``) for anything else.
    """
    text = value.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ApiError(422, "validation_error", f"{name} must be true or false, got {value!r}.", name)


def merge_parameter(name: str, from_query: str | None, from_body: str | None) -> str | None:
    """One value of ``name`` from the query string and the body (either may be absent).

    The query value is checked as a form field is (a string of at most ``MAX_ID_LENGTH``
    characters; blank counts as absent).

    Raises:
        ApiError: 422 ``conflicting_parameter`` (``param`` = ``name``) when both give a
            value and they differ; 422 ``validation_error`` for a query value too long.
    """
    query_value = _text_field(from_query, name)
    if query_value is None:
        return from_body
    if from_body is not None and from_body != query_value:
        raise ApiError(
            422,
            "conflicting_parameter",
            f"{name} is given twice with different values: {query_value!r} in the query "
            f"string, {from_body!r} in the body; give it once.",
            name,
        )
    return query_value


async def read_predict_request(
    request: Request, settings: Settings
) -> tuple[np.ndarray, str | None, str | None, bool]:
    """Parse either request form.

    Returns:
        ``(images uint8 (N, 28, 28), model_id, adapter_id, batch)``; ``batch`` says whether
        the answer uses the ``{"predictions": [...]}`` envelope.

    Raises:
        ApiError: 415 for another content type; 422 for a bad body (see the readers).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return await _read_json(request, settings)
    if content_type == "multipart/form-data":
        return await _read_multipart(request, settings)
    if content_type == "application/octet-stream":
        images = raw_to_images(await request.body())
        _check_count(images.shape[0], settings, "body")
        return images, None, None, images.shape[0] > 1
    raise ApiError(
        415,
        "unsupported_media_type",
        "Send multipart/form-data with a `file` field, application/json with `pixels`, or "
        "application/octet-stream with N x 784 uint8 pixels.",
    )


async def _read_json(
    request: Request, settings: Settings
) -> tuple[np.ndarray, str | None, str | None, bool]:
    images, model_id, adapter_id, batch = read_json_body(
        await request.body(), settings.predict_max_images
    )
    _check_count(images.shape[0], settings, "pixels")
    return images, model_id, adapter_id, batch


async def _read_multipart(
    request: Request, settings: Settings
) -> tuple[np.ndarray, str | None, str | None, bool]:
    try:
        form_cm = request.form(max_files=settings.predict_max_images, max_fields=8)
        async with form_cm as form:
            refuse_unknown(form.keys(), _FORM_FIELDS, "form field")
            files = form.getlist("file")
            if not files:
                raise ApiError(422, "missing_file", "The form has no `file` field.", "file")
            if not all(isinstance(f, UploadFile) for f in files):
                raise ApiError(422, "missing_file", "`file` must be a file upload.", "file")
            _check_count(len(files), settings, "file")
            blobs = [await f.read() for f in files]  # type: ignore[union-attr]
            model_id = _text_field(form.get("model_id"), "model_id")
            adapter_id = _text_field(form.get("adapter_id"), "adapter_id")
    except StarletteHTTPException as exc:  # malformed multipart, too many files or fields
        if str(exc.detail).startswith("Too many files"):
            raise ApiError(
                422,
                "too_many_images",
                f"More than {settings.predict_max_images} images in one request.",
                "file",
            ) from None
        raise ApiError(exc.status_code, "invalid_multipart", str(exc.detail)) from None
    images = await anyio.to_thread.run_sync(_decode_all, blobs, settings.max_image_pixels)
    return images, model_id, adapter_id, len(blobs) > 1


def _decode_all(blobs: list[bytes], max_pixels: int) -> np.ndarray:
    """Decode every upload (worker thread); errors name the field, e.g. ``file.2``."""
    names = ["file"] if len(blobs) == 1 else [f"file.{i}" for i in range(len(blobs))]
    return np.stack(
        [
            decode_upload(b, max_pixels=max_pixels, param=n)
            for b, n in zip(blobs, names, strict=True)
        ]
    )


def _text_field(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH:
        raise ApiError(
            422,
            "validation_error",
            f"{name} must be a string of at most {MAX_ID_LENGTH} chars.",
            name,
        )
    return value.strip() or None


def _check_count(n: int, settings: Settings, param: str) -> None:
    if n > settings.predict_max_images:
        raise ApiError(
            422,
            "too_many_images",
            f"{n} images in one request; the limit is {settings.predict_max_images}.",
            param,
        )
