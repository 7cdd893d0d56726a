"""The JSON body of ``POST /predict``: its model, and two readers that agree.

:class:`PredictRequest` is the contract (OpenAPI schema, error messages). Validating 784
numbers with it and converting them costs ~47 us a request (pydantic 25 us, list to array
21 us), a tenth of the request's CPU in the API process (issue 16). :func:`read_json_body`
therefore first tries a fast reader, ``orjson.loads`` and one ``numpy.array`` over the
nested lists (~25 us), that only *accepts* bodies the model accepts and answers the same
values; anything it is not sure of (bad JSON, a boolean or a string among the pixels, an
unknown key, a wrong shape, a value out of range) goes to the model, whose answer (value or
error) is the one given. Tests: ``tests/predict/test_predict_json.py``.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.core.errors import ApiError
from service.core.vocab import MAX_ID_LENGTH
from service.serving.images import pixels_to_images

MAX_JSON_IMAGES = 256  # schema bound; settings.predict_max_images is the effective limit

# strict: JSON numbers only (no booleans or numeric strings); ints are accepted as floats
Pixel = Annotated[float, Field(ge=0, le=255, allow_inf_nan=False, strict=True)]
Row = Annotated[list[Pixel], Field(min_length=28, max_length=28)]
Image28 = Annotated[list[Row], Field(min_length=28, max_length=28)]

_KEYS = frozenset({"pixels", "model_id", "adapter_id"})


class PredictRequest(BaseModel):
    """JSON body of ``POST /predict``."""

    model_config = ConfigDict(extra="forbid")

    pixels: Image28 | Annotated[list[Image28], Field(min_length=1, max_length=MAX_JSON_IMAGES)] = (
        Field(
            description="One 28 x 28 grayscale image (rows of 28 values in [0, 255], light "
            "digit on dark like MNIST; dark-on-light is inverted), or a list of them.",
            union_mode="left_to_right",  # 5x faster than "smart" on 784 floats
        )
    )
    model_id: str | None = Field(
        None,
        max_length=MAX_ID_LENGTH,
        description="Base model (default: the newest pre-trained one).",
    )
    adapter_id: str | None = Field(
        None,
        max_length=MAX_ID_LENGTH,
        description="LoRA adapter of that base model (default: none).",
    )


JsonBody = tuple[np.ndarray, str | None, str | None, bool]
"""``(images uint8 (N, 28, 28), model_id, adapter_id, batch)``; ``batch`` says whether the
answer uses the ``{"predictions": [...]}`` envelope (``pixels`` was a list of arrays)."""


def read_json_body(body: bytes, max_images: int) -> JsonBody:
    """Parse and check a JSON ``/predict`` body (fast reader first, the model otherwise).

    Args:
        body: the request body, as received.
        max_images: ``settings.predict_max_images``, named in the error message.

    Returns:
        See :data:`JsonBody`; blank ids count as absent (None).

    Raises:
        ApiError: 422 ``invalid_pixels`` (``param`` ``pixels``) for a wrong shape, a value
            that is not a number in [0, 255], or more than ``MAX_JSON_IMAGES`` images.
        RequestValidationError: any other problem (bad JSON, an unknown key, a bad id),
            answered by the app's handler (400 ``invalid_json`` or 422).
    """
    fast = read_json_fast(body)
    return fast if fast is not None else read_json_validated(body, max_images)


def read_json_fast(body: bytes) -> JsonBody | None:
    """The fast reader: the parsed body when it is plainly valid, else None.

    Accepts only what :class:`PredictRequest` accepts (a dict with ``pixels`` and optional
    string ids, nothing else; pixels JSON integers or floats in [0, 255], shape (28, 28) or
    (N, 28, 28) with 1 <= N <= ``MAX_JSON_IMAGES``) and returns what
    :func:`read_json_validated` returns for it. Booleans would pass ``numpy.array`` as
    integers, so a body containing the bytes ``true`` or ``false`` anywhere is left to the
    model.
    """
    if b"true" in body or b"false" in body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or "pixels" not in doc or not _KEYS.issuperset(doc):
        return None
    ids = [doc.get("model_id"), doc.get("adapter_id")]
    if not all(v is None or (type(v) is str and len(v) <= MAX_ID_LENGTH) for v in ids):
        return None
    pixels = doc["pixels"]
    if type(pixels) is not list:
        return None
    try:
        arr = np.array(pixels)
    except (ValueError, TypeError, OverflowError):  # ragged, or ints beyond 64 bits
        return None
    if arr.dtype.kind not in "iuf" or not (
        arr.ndim == 2 or (arr.ndim == 3 and arr.shape[0] <= MAX_JSON_IMAGES)
    ):
        return None
    try:  # the shape and range rule is pixels_to_images's
        images = pixels_to_images(arr)
    except ApiError:
        return None
    return images, ids[0] or None, ids[1] or None, arr.ndim == 3


def read_json_validated(body: bytes, max_images: int) -> JsonBody:
    """The reference reader: :class:`PredictRequest`, then ``pixels_to_images``.

    Raises:
        See :func:`read_json_body`.
    """
    try:
        request = PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["loc"][:1] == ("pixels",) and e["type"] != "missing" for e in errors):
            raise ApiError(
                422,
                "invalid_pixels",
                "pixels must be a 28 x 28 array of numbers in [0, 255], or a list of 1 to "
                f"{max_images} such arrays.",
                "pixels",
            ) from None
        raise RequestValidationError(errors) from None
    batch = isinstance(request.pixels[0][0], list)
    images = pixels_to_images(request.pixels)
    return images, request.model_id or None, request.adapter_id or None, batch
