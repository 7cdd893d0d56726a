"""``POST /predict`` with ``application/octet-stream``: N x 784 uint8 pixels (issue 16)."""

from __future__ import annotations

import pytest

from tests.predict.conftest import sample_pixels


def test_binary_body_answers_as_json_does(predict_client) -> None:
    pixels = sample_pixels(3).numpy()
    by_json = predict_client.post(
        "/predict", json={"pixels": pixels.tolist(), "adapter_id": "ad1"}
    ).json()["predictions"]
    raw = {"content-type": "application/octet-stream"}
    one = predict_client.post("/predict?adapter_id=ad1", content=pixels[0].tobytes(), headers=raw)
    assert one.status_code == 200, one.text
    assert one.json()["probabilities"] == pytest.approx(by_json[0]["probabilities"], abs=1e-6)
    assert one.json()["adapter_id"] == "ad1"
    many = predict_client.post("/predict?adapter_id=ad1", content=pixels.tobytes(), headers=raw)
    assert many.status_code == 200, many.text
    assert [p["digit"] for p in many.json()["predictions"]] == [p["digit"] for p in by_json]
    base = predict_client.post("/predict", content=pixels[0].tobytes(), headers=raw).json()
    assert base["model_id"] == "base" and base["adapter_id"] is None


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        (b"", "invalid_pixels", 422),
        (b"\0" * 783, "invalid_pixels", 422),
        (b"\0" * (784 + 1), "invalid_pixels", 422),
        (b"\0" * 784 * 33, "too_many_images", 422),
    ],
)
def test_binary_body_errors(predict_client, body: bytes, code: str, status: int) -> None:
    r = predict_client.post(
        "/predict", content=body, headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == "body"
