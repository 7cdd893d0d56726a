"""What ``POST /jobs`` and ``POST /sweeps`` share for ``Idempotency-Key``: the digest of a
request as validated, and the 409 for a key reused with a different request."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from service.core.errors import ApiError


def request_digest(request: Any) -> str:
    """SHA-256 (hex) of ``request`` (JSON-ready) as canonical JSON: key order and whitespace
    do not change it."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_reused(key: str, what: str, ident: str) -> ApiError:
    """409 ``idempotency_key_reused``: ``key`` made ``what`` ``ident`` from another request."""
    return ApiError(
        409,
        "idempotency_key_reused",
        f"Idempotency-Key {key!r} was used for {what} {ident} with a different request; "
        "use a new key for a new request.",
        "Idempotency-Key",
    )
