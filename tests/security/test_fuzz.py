"""Schemathesis against the app's own OpenAPI schema, in process: no 5xx, schema-conformant
answers, and invalid input rejected with a 4xx.

The app is the embedded configuration on a temp database whose Celery broker (SQLite) no
worker consumes, so submitted jobs are only queued. Generation is derandomized and small
(``MAX_EXAMPLES`` per operation and mode) to keep the run bounded and repeatable.

(schemathesis' own ``from_fixture(...).parametrize()`` needs a pytest internal that pytest 9
removed, so operations are parametrized here and each runs a plain Hypothesis test.)
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
KEYED_EXAMPLES = 4
API_KEY = "fuzz-key"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _operations() -> list[tuple[str, bool]]:
    """``("METHOD /path", has_inputs)`` of every operation (schema built without a database)."""
    from service.api.app import create_app
    from service.core.settings import Settings

    app = create_app(Settings(database_url="sqlite://", api_keys=[], _env_file=None))
    found = []
    for path, item in app.openapi()["paths"].items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is not None:
                has_inputs = bool(operation.get("parameters") or operation.get("requestBody"))
                found.append((f"{method.upper()} {path}", has_inputs))
    return found


CASES = [
    pytest.param(label, mode, id=f"{mode.value}-{label}")
    for label, has_inputs in _operations()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if has_inputs or mode is GenerationMode.POSITIVE
]


def _fuzz(app, label: str, mode, examples: int, checks: list, headers=None) -> None:
    api = schemathesis.openapi.from_asgi("/openapi.json", app)
    operation = api.find_operation_by_label(label)
    assert operation is not None, label

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        case.call_and_validate(checks=checks, headers=headers)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip("every input of this operation is valid (e.g. a free-form path id)")


@pytest.mark.parametrize("label, mode", CASES)
def test_operation_conforms_and_never_fails(app, base_model_id, label: str, mode) -> None:
    _fuzz(app, label, mode, MAX_EXAMPLES, CHECKS)


@pytest.mark.parametrize("label", sorted({label for label, _ in _operations()}))
def test_keyed_operation_enforces_its_declared_auth(make_app, base_model_id, label: str) -> None:
    """With keys set, a 2xx answer to a keyed request must turn 401 without/with a bad key."""
    app = make_app(api_keys=[API_KEY])
    headers = {"Authorization": f"Bearer {API_KEY}"}
    checks = [*CHECKS[:-1], ignored_auth]
    _fuzz(app, label, GenerationMode.POSITIVE, KEYED_EXAMPLES, checks, headers)
