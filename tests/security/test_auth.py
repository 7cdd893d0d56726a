"""API keys: open vs keyed apps, public paths, constant-time comparison, no key in logs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

API_KEY = "test-key-Ω-1"  # non-ASCII on purpose: compared as UTF-8 bytes
OTHER_KEY = "second-key"


@pytest.fixture
def keyed_client(make_app) -> Iterator[TestClient]:
    """A client of an app that requires ``API_KEY`` or ``OTHER_KEY`` (no header sent)."""
    with TestClient(make_app(api_keys=[API_KEY, OTHER_KEY])) as c:
        yield c


PUBLIC = ["/health", "/health/live", "/health/ready", "/docs", "/redoc", "/openapi.json"]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_open_app_warns_loudly_and_needs_no_key(make_app, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="service.api.security"):
        app = make_app(api_keys=[])
    assert any("OPEN" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    with TestClient(app) as client:
        response = client.get("/no-such-endpoint")
    assert response.status_code == 404


def test_keyed_app_does_not_warn(make_app, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="service.api.security"):
        make_app(api_keys=[API_KEY])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("path", PUBLIC)
def test_health_and_docs_are_public(keyed_client, path: str):
    response = keyed_client.get(path)
    assert response.status_code == 200, response.text  # the app's DB and broker are up here


def test_missing_key_is_401_with_challenge(keyed_client):
    response = keyed_client.get("/adapters")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert "Authorization: Bearer" in error["message"]


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong", f"Basic {API_KEY}", "Bearer", f"Bearer {API_KEY}x", f"bearer {API_KEY[:-1]}"],
)
def test_wrong_key_is_401(keyed_client, header: str):
    response = keyed_client.get("/adapters", headers={"Authorization": header.encode("utf-8")})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("key", [API_KEY, OTHER_KEY])
def test_any_configured_key_is_accepted(keyed_client, key: str):
    headers = {"Authorization": f"Bearer {key}".encode()}
    response = keyed_client.get("/no-such-endpoint", headers=headers)
    assert response.status_code == 404  # got past auth to the router
    lower = {"Authorization": f"bearer   {key}".encode()}
    assert keyed_client.get("/no-such-endpoint", headers=lower).status_code == 404


def test_every_operation_but_public_ones_requires_a_key(keyed_client):
    schema = keyed_client.get("/openapi.json").json()
    checked = 0
    for path, item in schema["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method in item:
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            response = keyed_client.request(method, concrete)
            if path in PUBLIC or path.startswith("/health/"):
                assert response.status_code != 401, (method, path)
            else:
                assert response.status_code == 401, (method, path)
                checked += 1
    assert checked >= 15  # jobs, models, adapters, predict, evaluate: all behind the key


def test_keys_are_compared_in_constant_time(make_app, monkeypatch: pytest.MonkeyPatch):
    import hmac

    import service.api.security as security

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    with TestClient(make_app(api_keys=[API_KEY, OTHER_KEY])) as client:
        client.get("/adapters", headers=_bearer(OTHER_KEY))
        client.get("/adapters", headers=_bearer("nope"))
    # every configured key is compared on every attempt (no early exit), as bytes
    assert len(calls) == 4
    assert {b for _, b in calls} == {API_KEY.encode(), OTHER_KEY.encode()}


def test_keys_are_never_logged(make_app, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.DEBUG):
        with TestClient(make_app(api_keys=[API_KEY])) as client:
            client.get("/adapters", headers={"Authorization": b"Bearer wrong-key-zq9"})
            client.get("/adapters", headers={"Authorization": f"Bearer {API_KEY}".encode()})
    assert API_KEY not in caplog.text
    assert "wrong-key-zq9" not in caplog.text


def test_openapi_declares_the_bearer_scheme(keyed_client, make_app):
    schema = keyed_client.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            expected = [] if path in PUBLIC else [{"bearerAuth": []}]
            assert operation["security"] == expected, (method, path)
    with TestClient(make_app(api_keys=[])) as open_client:
        open_schema = open_client.get("/openapi.json").json()
    assert "bearerAuth" in open_schema["components"]["securitySchemes"]
