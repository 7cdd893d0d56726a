"""``POST /predict?include_image=true``: the answer carries the 28 x 28 image the model saw."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.serving.images import decode_upload, pixels_to_images
from tests.predict.conftest import sample_pixels


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_include_image_returns_the_preprocessed_image(predict_client) -> None:
    # a dark vertical stroke on a white 200 x 200 canvas: inverted, cropped, centred
    canvas = np.full((200, 200), 255, dtype=np.uint8)
    canvas[40:160, 95:105] = 0
    upload = _png(canvas)
    answer = predict_client.post(
        "/predict?include_image=true", files={"file": ("d.png", upload, "image/png")}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    image = np.array(body["image"])
    assert image.shape == (28, 28) and image.dtype.kind == "i"
    assert (image == decode_upload(upload, max_pixels=10**7)).all()  # exactly what it saw
    plain = predict_client.post("/predict", files={"file": ("d.png", upload, "image/png")})
    assert "image" not in plain.json()  # opt-in only
    assert plain.json()["probabilities"] == body["probabilities"]


def test_include_image_on_a_json_batch_and_refused_values(predict_client) -> None:
    pixels = sample_pixels(2)
    light_on_dark = pixels.numpy()
    dark_on_light = 255 - light_on_dark
    body = {"pixels": [light_on_dark[0].tolist(), dark_on_light[1].tolist()]}
    answer = predict_client.post("/predict?include_image=1", json=body)
    assert answer.status_code == 200, answer.text
    images = [np.array(p["image"]) for p in answer.json()["predictions"]]
    expected = pixels_to_images(body["pixels"])
    assert all((got == want).all() for got, want in zip(images, expected, strict=True))
    assert (images[1] == light_on_dark[1]).all()  # the inverted one comes back light-on-dark
    off = predict_client.post("/predict?include_image=false", json=body).json()
    assert all("image" not in p for p in off["predictions"])
    bad = predict_client.post("/predict?include_image=maybe", json=body)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"
    assert bad.json()["error"]["param"] == "include_image"
