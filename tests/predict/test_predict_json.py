"""The fast JSON reader of ``/predict`` agrees with the model it stands in for.

``read_json_fast`` may decline any body (None: the model then answers), but what it accepts
the model must accept with the same images, ids and envelope, and it must not decline the
common bodies (else it speeds nothing up).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError

from service.api.predict_json import (
    MAX_JSON_IMAGES,
    read_json_body,
    read_json_fast,
    read_json_validated,
)
from service.core.errors import ApiError

rng = np.random.default_rng(0)
IMG = rng.integers(0, 256, (28, 28)).tolist()
DARK_ON_LIGHT = (255 - rng.integers(0, 40, (28, 28))).tolist()  # inverted by the polarity rule
FLOATS = (rng.random((28, 28)) * 255).tolist()
ROWS = [[0] * 28] * 28


def body(**doc) -> bytes:
    return json.dumps(doc).encode()


def first_pixel(token: str) -> bytes:
    """An all-zero image whose first pixel is the JSON text ``token`` (maybe not JSON)."""
    return body(pixels=ROWS).replace(b"[[0", b"[[" + token.encode(), 1)


COMMON = {  # the fast reader must take these
    "ints": body(pixels=IMG),
    "ints, ids": body(pixels=IMG, model_id="base", adapter_id="ad1"),
    "floats": body(pixels=FLOATS),
    "mixed ints and floats": body(pixels=[[0.5] + r[1:] for r in IMG]),
    "dark on light": body(pixels=DARK_ON_LIGHT),
    "a batch of one": body(pixels=[IMG]),
    "a batch of three": body(pixels=[IMG, FLOATS, DARK_ON_LIGHT], adapter_id="ad2"),
    "blank ids": body(pixels=IMG, model_id="", adapter_id=None),
    "edges 0 and 255": body(pixels=[[0] * 14 + [255] * 14] * 28),
    "the largest batch": body(pixels=[ROWS] * MAX_JSON_IMAGES),
    "whitespace": b'  {"pixels" : ' + json.dumps(IMG).encode() + b" }\n",
}

REFUSED = {  # the model refuses these; the fast reader must decline them
    "a boolean pixel": body(pixels=[[True] + r[1:] for r in IMG]),
    "false pixels": body(pixels=[[False] * 28] * 28),
    "a numeric string": body(pixels=[["1"] + r[1:] for r in IMG]),
    "a null pixel": body(pixels=[[None] + r[1:] for r in IMG]),
    "256": body(pixels=[[256] + r[1:] for r in IMG]),
    "255.5": body(pixels=[[255.5] + r[1:] for r in IMG]),
    "-1": body(pixels=[[-1] + r[1:] for r in IMG]),
    "-0.1": body(pixels=[[-0.1] + r[1:] for r in IMG]),
    "NaN": first_pixel("NaN"),
    "Infinity": first_pixel("Infinity"),
    "1e999": first_pixel("1e999"),
    "2**64": body(pixels=[[2**64] + r[1:] for r in IMG]),
    "2**70": body(pixels=[[2**70] + r[1:] for r in IMG]),
    "27 rows": body(pixels=IMG[:27]),
    "27 columns": body(pixels=[r[:27] for r in IMG]),
    "ragged": body(pixels=IMG[:27] + [IMG[27][:27]]),
    "one row": body(pixels=IMG[0]),
    "empty": body(pixels=[]),
    "an empty batch": body(pixels=[[]]),
    "four dimensions": body(pixels=[[IMG]]),
    "too many images": body(pixels=[ROWS] * (MAX_JSON_IMAGES + 1)),
    "pixels as a dict": body(pixels={"0": IMG}),
    "pixels as a number": body(pixels=3),
    "no pixels": body(model_id="base"),
    "an unknown key": body(pixels=IMG, extra=1),
    "a top-level list": json.dumps([IMG]).encode(),
    "model_id a number": body(pixels=IMG, model_id=3),
    "adapter_id a list": body(pixels=IMG, adapter_id=["ad1"]),
    "model_id too long": body(pixels=IMG, model_id="m" * 65),
    "not JSON": b"{not json",
    "truncated": body(pixels=IMG)[:-5],
    "empty body": b"",
}


def agree(raw: bytes):
    """Both readers' outcomes: (fast result or None, validated result or the error)."""
    try:
        reference = read_json_validated(raw, 32)
    except (ApiError, RequestValidationError) as exc:
        reference = exc
    return read_json_fast(raw), reference


@pytest.mark.parametrize("name", list(COMMON))
def test_fast_reader_takes_common_bodies_and_answers_as_the_model(name) -> None:
    fast, reference = agree(COMMON[name])
    assert fast is not None, "the fast reader declined a plain body"
    assert not isinstance(reference, Exception), reference
    images, model_id, adapter_id, batch = fast
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    np.testing.assert_array_equal(images, reference[0])
    assert (model_id, adapter_id, batch) == reference[1:]


@pytest.mark.parametrize("name", list(REFUSED))
def test_fast_reader_declines_what_the_model_refuses(name) -> None:
    fast, reference = agree(REFUSED[name])
    assert isinstance(reference, Exception), f"the model accepted {name!r}"
    assert fast is None
    with pytest.raises(type(reference)):  # read_json_body gives the model's answer
        read_json_body(REFUSED[name], 32)


def test_ids_containing_true_are_left_to_the_model_and_still_read() -> None:
    raw = body(pixels=IMG, model_id="true-base", adapter_id="false-ad")
    assert read_json_fast(raw) is None  # the boolean guard is by bytes: conservative
    images, model_id, adapter_id, batch = read_json_body(raw, 32)
    assert (model_id, adapter_id, batch) == ("true-base", "false-ad", False)
    np.testing.assert_array_equal(images, read_json_validated(body(pixels=IMG), 32)[0])


def test_dark_on_light_is_inverted_by_both_readers() -> None:
    images, *_ = read_json_fast(COMMON["dark on light"])
    np.testing.assert_array_equal(images[0], 255 - np.array(DARK_ON_LIGHT, dtype=np.uint8))


def test_duplicate_keys_read_alike() -> None:
    raw = b'{"pixels": ' + json.dumps(ROWS).encode() + b', "pixels": ' + json.dumps(IMG).encode()
    fast, reference = agree(raw + b"}")
    assert fast is not None and not isinstance(reference, Exception)
    np.testing.assert_array_equal(fast[0], reference[0])  # both keep the last
    np.testing.assert_array_equal(fast[0], read_json_validated(body(pixels=IMG), 32)[0])
