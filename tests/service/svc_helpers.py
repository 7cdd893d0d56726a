"""Helpers shared by the service tests (importable, unlike conftest.py)."""

from __future__ import annotations

import secrets

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SMALL_ARCH = {"in_features": 784, "hidden1": 32, "hidden2": 48, "n_classes": 5, "dropout": 0.5}


def error_of(resp, status: int, code: str, param: str | None = "ANY") -> dict:  # noqa: ANN001
    """Assert ``resp`` is the error envelope with ``status`` and ``code`` (and ``param``)."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "param", "request_id"}, body
    assert body["error"]["request_id"] == resp.headers.get("x-request-id"), body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    if param != "ANY":
        assert body["error"]["param"] == param, body
    return body["error"]


def add_model(url: str, model_id: str | None = None, classes: list[int] | None = None) -> str:
    """Register a (file-less) model record; returns its id."""
    from service.db import model_records
    from service.db.engine import session_scope

    model_id = model_id or f"mdl_{secrets.token_hex(6)}"
    with session_scope(url) as session:
        model_records.register_model(
            session,
            model_id=model_id,
            kind="pretrain",
            job_id=None,
            parent_id=None,
            classes=classes or [0, 1, 2, 3, 4],
            architecture=SMALL_ARCH,
            n_parameters=1,
            test_accuracy=0.9,
            path="/nonexistent",
        )
    return model_id
