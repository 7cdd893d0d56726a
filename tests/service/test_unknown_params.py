"""Unknown query parameters and form fields are refused, on every endpoint, by one rule
(``service.api.strict``); ``/predict`` also takes ``model_id``/``adapter_id`` in the query.
"""

from __future__ import annotations

import io
import re
from typing import Annotated

import pytest
from fastapi import APIRouter, FastAPI, Query
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import BaseModel
from svc_helpers import error_of

from service.api.errors import install_error_handlers
from service.api.strict import StrictRoute, refuse_unknown
from service.core.errors import ApiError
from tests.predict import conftest as predict_fixtures
from tests.predict.conftest import sample_pixels
from tests.security import conftest as security_fixtures
from tests.security.conftest import _post_adapter

# The /predict and /adapters fixtures, shared with tests/predict and tests/security
artifacts = predict_fixtures.artifacts
registered = predict_fixtures.registered
make_app = predict_fixtures.make_app
predict_client = predict_fixtures.predict_client
peft_pair = security_fixtures.peft_pair
base_model_id = security_fixtures.base_model_id

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(sample_pixels(1, seed)[0].numpy()).save(buf, "PNG")
    return buf.getvalue()


def _operations(app) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every operation in the app's OpenAPI document."""
    return [
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in HTTP_METHODS
        if method in item
    ]


# ------------------------------------------------------------------ every route, one rule


def test_every_api_route_of_the_app_is_strict(app) -> None:
    contexts = [
        c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)
    ]
    assert contexts, "no API route found"
    plain = [
        f"{c.methods} {c.path}" for c in contexts if not isinstance(c.original_route, StrictRoute)
    ]
    assert plain == []
    # the walk saw every operation the schema documents (so none is hidden from it)
    walked = {(m, c.path) for c in contexts for m in c.methods}
    assert set(_operations(app)) <= walked


def test_every_documented_operation_refuses_an_unknown_query_parameter(client, app) -> None:
    """Before the route looks anything up or reads the body: 422, named, nothing done."""
    for method, path in _operations(app):
        url = re.sub(r"\{[^}]+\}", "some_id", path) + "?zz_unknown=1"
        response = client.request(method, url)
        err = error_of(response, 422, "unknown_parameter", "zz_unknown")
        assert "'zz_unknown'" in err["message"], (method, path, err)
    assert client.get("/jobs").json()["total"] == 0  # POST /jobs?zz_unknown=1 created nothing


@pytest.mark.parametrize(
    "path",
    [
        "/jobs?foo=1",
        "/jobs?limit=5&foo=1",
        "/models?foo=1",
        "/adapters?foo",
        "/jobs/job_nope/metrics?format=csv&foo=1",
        "/health?foo=1",
        "/predict/stats?foo=1",
    ],
)
def test_get_with_unknown_query_parameter_is_422(client, path: str) -> None:
    err = error_of(client.get(path), 422, "unknown_parameter", "foo")
    assert "foo" in err["message"]


def test_message_lists_what_the_endpoint_accepts(client) -> None:
    err = error_of(client.get("/jobs?zeta=1&alpha=2"), 422, "unknown_parameter", "alpha")
    assert "'alpha', 'zeta'" in err["message"]
    assert "kind, limit, offset, status" in err["message"]
    err = error_of(client.get("/health?x=1"), 422, "unknown_parameter", "x")
    assert "no query parameter" in err["message"]


def test_declared_query_parameters_still_work(client) -> None:
    assert client.get("/jobs?limit=5&offset=0&status=queued&kind=pretrain").status_code == 200
    assert client.get("/models?kind=pretrain").status_code == 200
    assert client.get("/adapters?base_model_id=x&limit=1").status_code == 200
    error_of(client.get("/jobs/job_nope/metrics?format=csv"), 404, "job_not_found")
    assert client.get("/predict/ping").json() == {"ok": True}


def test_post_jobs_with_unknown_query_parameter_creates_nothing(client) -> None:
    error_of(client.post("/jobs?foo=1", json={"kind": "pretrain"}), 422, "unknown_parameter", "foo")
    assert client.get("/jobs").json()["total"] == 0
    assert client.post("/jobs", json={"kind": "pretrain"}).status_code == 202


# ------------------------------------------------------------------ form fields


def test_post_adapters_unknown_form_field_is_422(client, migrated) -> None:
    files = [("files", ("adapter.zip", b"PK", "application/zip"))]
    data = {"base_model_id": "m", "rank": "4"}
    err = error_of(client.post("/adapters", data=data, files=files), 422, "unknown_parameter")
    assert err["param"] == "rank"
    assert "base_model_id, classes, files" in err["message"]
    # an unknown file part is refused the same way
    files = [*files, ("extra", ("x.bin", b"x", "application/octet-stream"))]
    error_of(
        client.post("/adapters", data={"base_model_id": "m"}, files=files),
        422,
        "unknown_parameter",
        "extra",
    )
    # and in a urlencoded form
    error_of(
        client.post("/adapters", data={"base_model_id": "m", "oops": "1"}),
        422,
        "unknown_parameter",
        "oops",
    )
    adapters = migrated.artifact_dir / "adapters"
    assert not adapters.exists() or list(adapters.iterdir()) == []


def test_post_adapters_with_known_fields_still_imports(client, base_model_id, peft_pair) -> None:
    """The strict check parses the form first; the route reads the same (cached) form."""
    refused = _post_adapter(client, base_model_id, list(peft_pair.files().items()), r="4")
    error_of(refused, 422, "unknown_parameter", "r")
    created = _post_adapter(
        client, base_model_id, list(peft_pair.files().items()), classes="5,6,7,8,9"
    )
    assert created.status_code == 201, created.text
    assert created.json()["classes"] == [5, 6, 7, 8, 9]
    assert client.get("/adapters").json()["total"] == 1


def test_streamed_form_over_the_body_limit_is_still_413(migrated) -> None:
    from service.api.app import create_app

    limit = 64 * 1024
    boundary = "strictboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="base_model_id"\r\n\r\nm\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()

    def chunks():
        yield head
        for _ in range(2 * limit // 8192):
            yield b"\0" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    app = create_app(migrated.model_copy(update={"max_request_bytes": limit}))
    with TestClient(app) as c:
        response = c.post(
            "/adapters",
            content=chunks(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    error_of(response, 413, "request_too_large")


# ------------------------------------------------------------------ /predict


def test_predict_multipart_takes_adapter_id_from_the_query(predict_client) -> None:
    """Round one's failure: ``POST /predict?adapter_id=X -F file=@...`` ignored X."""
    files = {"file": ("seven.png", _png(), "image/png")}
    by_query = predict_client.post("/predict?adapter_id=ad0", files=files)
    assert by_query.status_code == 200, by_query.text
    body = by_query.json()
    assert body["adapter_id"] == "ad0" and body["model_id"] == "base"
    assert set(body["probabilities"]) == {"5", "6", "7", "8", "9"}  # the adapter's head
    by_form = predict_client.post("/predict", files=files, data={"adapter_id": "ad0"}).json()
    assert body["probabilities"] == pytest.approx(by_form["probabilities"], abs=1e-6)


def test_predict_same_value_both_ways_is_fine(predict_client) -> None:
    files = {"file": ("a.png", _png(), "image/png")}
    response = predict_client.post(
        "/predict?adapter_id=ad0&model_id=base",
        files=files,
        data={"adapter_id": "ad0", "model_id": "base"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["adapter_id"] == "ad0"


def test_predict_different_values_both_ways_conflict(predict_client) -> None:
    files = {"file": ("a.png", _png(), "image/png")}
    response = predict_client.post(
        "/predict?adapter_id=ad0", files=files, data={"adapter_id": "ad1"}
    )
    err = error_of(response, 422, "conflicting_parameter", "adapter_id")
    assert "'ad0'" in err["message"] and "'ad1'" in err["message"]
    pixels = sample_pixels(1)[0].tolist()
    response = predict_client.post(
        "/predict?model_id=other", json={"pixels": pixels, "model_id": "base"}
    )
    error_of(response, 422, "conflicting_parameter", "model_id")


def test_predict_json_with_query_model_and_adapter(predict_client) -> None:
    pixels = sample_pixels(1)[0].tolist()
    response = predict_client.post("/predict?model_id=base", json={"pixels": pixels})
    assert response.status_code == 200, response.text
    assert response.json()["model_id"] == "base" and response.json()["adapter_id"] is None
    response = predict_client.post("/predict?adapter_id=ad1", json={"pixels": pixels})
    assert response.status_code == 200, response.text
    assert response.json()["adapter_id"] == "ad1"
    # the query's ids are checked like the body's
    error_of(
        predict_client.post("/predict?adapter_id=nope", json={"pixels": pixels}),
        404,
        "adapter_not_found",
    )
    error_of(
        predict_client.post(f"/predict?model_id={'m' * 65}", json={"pixels": pixels}),
        422,
        "validation_error",
        "model_id",
    )


def test_predict_blank_query_value_counts_as_absent(predict_client) -> None:
    files = {"file": ("a.png", _png(), "image/png")}
    response = predict_client.post("/predict?adapter_id=", files=files, data={"adapter_id": "ad2"})
    assert response.status_code == 200, response.text
    assert response.json()["adapter_id"] == "ad2"


def test_predict_unknown_query_parameter_or_form_field_is_422(predict_client) -> None:
    files = {"file": ("a.png", _png(), "image/png")}
    error_of(
        predict_client.post("/predict?adapter=ad0", files=files),
        422,
        "unknown_parameter",
        "adapter",
    )
    pixels = sample_pixels(1)[0].tolist()
    error_of(
        predict_client.post("/predict?foo=1", json={"pixels": pixels}),
        422,
        "unknown_parameter",
        "foo",
    )
    err = error_of(
        predict_client.post("/predict", files=files, data={"adapter": "ad0"}),
        422,
        "unknown_parameter",
        "adapter",
    )
    assert "adapter_id, file, model_id" in err["message"]


def test_predict_query_parameters_are_documented(app) -> None:
    operation = app.openapi()["paths"]["/predict"]["post"]
    names = {p["name"]: p for p in operation["parameters"]}
    assert set(names) == {"model_id", "adapter_id", "include_image"}
    assert all(p["in"] == "query" and p.get("description") for p in names.values())


# ------------------------------------------------------------------ the mechanism itself


def test_refuse_unknown_rule() -> None:
    refuse_unknown(["a", "a", "b"], {"a", "b", "c"}, "query parameter")  # nothing raised
    with pytest.raises(ApiError) as info:
        refuse_unknown(["z", "b", "y"], ["b"], "form field")
    exc = info.value
    assert (exc.status, exc.code, exc.param) == (422, "unknown_parameter", "y")
    assert exc.message == "Unknown form fields 'y', 'z' (accepted: b)."
    with pytest.raises(ApiError) as info:
        refuse_unknown([f"k{i:02}" for i in range(12)] + ["x" * 500], [], "query parameter")
    assert "and 3 more" in info.value.message and len(info.value.message) < 300


class _Filters(BaseModel):
    colour: str | None = None
    size: int | None = None


def test_strict_route_sees_aliases_and_query_models() -> None:
    """Names declared by aliases and by a query model pass; others are refused."""
    router = APIRouter(route_class=StrictRoute)

    @router.get("/things")
    def things(
        filters: Annotated[_Filters, Query()],
        page_size: Annotated[int, Query(alias="page-size")] = 10,
    ) -> dict:
        return {"page_size": page_size, **filters.model_dump()}

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    with TestClient(app) as c:
        ok = c.get("/things?page-size=3&colour=red&size=2")
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"page_size": 3, "colour": "red", "size": 2}
        error_of(c.get("/things?page_size=3"), 422, "unknown_parameter", "page_size")
