"""``POST /predict`` over the app: both request forms, the answer shapes, bad requests."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from tests.predict.conftest import insert_adapter, sample_pixels


def png(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def pixels():
    return sample_pixels(3)


def test_read_predict_json_single_and_batch(predict_client, pixels) -> None:
    one = predict_client.post("/predict", json={"pixels": pixels[0].tolist()})
    assert one.status_code == 200, one.text
    body = one.json()
    assert set(body) == {"digit", "probabilities", "model_id", "adapter_id"}
    assert body["model_id"] == "base" and body["adapter_id"] is None
    assert set(body["probabilities"]) == {"0", "1", "2", "3", "4"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert body["digit"] == int(max(body["probabilities"], key=body["probabilities"].get))

    many = predict_client.post(
        "/predict", json={"pixels": pixels.tolist(), "model_id": "base", "adapter_id": "ad1"}
    )
    assert many.status_code == 200, many.text
    preds = many.json()["predictions"]
    assert len(preds) == 3 and all(p["adapter_id"] == "ad1" for p in preds)
    for i, p in enumerate(preds):  # in order: each equals the image sent alone
        alone = predict_client.post(
            "/predict", json={"pixels": pixels[i].tolist(), "adapter_id": "ad1"}
        ).json()
        assert alone["digit"] == p["digit"]
        for k, v in alone["probabilities"].items():
            assert abs(v - p["probabilities"][k]) < 1e-5
    wrapped = predict_client.post("/predict", json={"pixels": [pixels[0].tolist()]})
    assert len(wrapped.json()["predictions"]) == 1  # a list of one is still a batch


def test_read_predict_multipart_single_and_several(predict_client, pixels) -> None:
    by_json = predict_client.post(
        "/predict", json={"pixels": pixels.tolist(), "adapter_id": "ad2"}
    ).json()["predictions"]
    one = predict_client.post(
        "/predict",
        files={"file": ("a.png", png(pixels[0]), "image/png")},
        data={"adapter_id": "ad2", "model_id": "base"},
    )
    assert one.status_code == 200, one.text
    assert one.json()["probabilities"] == pytest.approx(by_json[0]["probabilities"], abs=1e-5)
    files = [("file", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(pixels)]
    several = predict_client.post("/predict", files=files, data={"adapter_id": "ad2"})
    assert several.status_code == 200, several.text
    got = several.json()["predictions"]
    assert [p["digit"] for p in got] == [p["digit"] for p in by_json]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "invalid_json",
        ),
        ({"json": {"pixels": [[0] * 28] * 28, "extra": 1}}, 422, "validation_error"),
        ({"json": {"pixels": [[0] * 28] * 27}}, 422, "invalid_pixels"),
        ({"json": {"pixels": [[256] * 28] * 28}}, 422, "invalid_pixels"),
        ({"json": {"pixels": []}}, 422, "invalid_pixels"),
        ({"json": {"model_id": "base"}}, 422, "validation_error"),
        ({"json": {"pixels": [[[0] * 28] * 28] * 33}}, 422, "too_many_images"),
        ({"json": {"pixels": [[0] * 28] * 28, "model_id": "nope"}}, 404, "model_not_found"),
        ({"json": {"pixels": [[0] * 28] * 28, "adapter_id": "nope"}}, 404, "adapter_not_found"),
        (
            {"json": {"pixels": [[0] * 28] * 28, "model_id": "base", "adapter_id": "ad_other"}},
            409,
            "adapter_model_mismatch",
        ),
        (
            {"data": {"model_id": "base"}, "files": {"other": ("x", b"x", "text/plain")}},
            422,
            "unknown_parameter",
        ),
        (
            {"data": {"file": "not a file"}, "files": {"model_id": ("m", b"base", "text/plain")}},
            422,
            "missing_file",
        ),
        (
            {"files": [("file", (f"{i}.png", b"x", "image/png")) for i in range(40)]},
            422,
            "too_many_images",
        ),
    ],
)
def test_bad_requests_get_the_envelope(predict_client, kwargs, status, code) -> None:
    r = predict_client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_missing_file_field(predict_client) -> None:
    r = predict_client.post(
        "/predict",
        content=b'--b\r\nContent-Disposition: form-data; name="model_id"\r\n\r\nbase\r\n--b--\r\n',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 422 and r.json()["error"] == {
        "code": "missing_file",
        "message": "The form has no `file` field.",
        "param": "file",
        "request_id": r.headers["x-request-id"],
    }


def test_delete_adapter_route_then_predict_404(predict_client, registered, migrated, tmp_path):
    """The real ``DELETE /adapters/{id}`` (record, files, evict hook) while it is cached."""
    path = registered.adapters["ad5"][0]
    shutil.copytree(path, tmp_path / "copy")
    registered.adapters["doomed"] = (tmp_path / "copy", *registered.adapters["ad5"][1:])
    try:
        insert_adapter(migrated, registered, "doomed")
        body = {"pixels": [[0] * 28] * 28, "adapter_id": "doomed"}
        assert predict_client.post("/predict", json=body).status_code == 200
        predictor = predict_client.app.state.predictor
        assert "doomed" in predictor.executor.adapters.keys()
        assert predict_client.delete("/adapters/doomed").status_code == 204
        assert "doomed" not in predictor.executor.adapters.keys()
        r = predict_client.post("/predict", json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "adapter_not_found"
    finally:
        registered.adapters.pop("doomed")


def test_ping_stats_and_openapi(predict_client) -> None:
    assert predict_client.get("/predict/ping").json() == {"ok": True}
    predict_client.post("/predict", json={"pixels": [[0] * 28] * 28, "adapter_id": "ad0"})
    stats = predict_client.get("/predict/stats").json()
    assert stats["adapter_cache"]["resident"] == ["ad0"] and stats["samples"] >= 1
    op = predict_client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert set(op["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
        "application/octet-stream",
    }
    assert "anyOf" in str(op["responses"]["200"])  # single object or {"predictions": [...]}
