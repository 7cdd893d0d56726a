"""Who sent a request, without storing the key: an API key's id is a hash of it.

``key_id(raw)`` = ``key_`` + the first 16 hex digits of SHA-256(raw key): stable across
processes and restarts, enough to tell a deployment's keys apart, and useless for
recovering the key (it is never stored or logged; the settings hold it as a ``SecretStr``).
Jobs record the id of the key that submitted them (per-key caps), and Idempotency-Keys are
stored scoped to it (:func:`scoped_idempotency_key`), so one client's key can never return
another client's job.
"""

from __future__ import annotations

import hashlib

KEY_ID_PREFIX = "key_"
MAX_STORED_KEY = 200  # the idempotency_key columns' length


def key_id(raw: str | bytes) -> str:
    """The id of the API key ``raw`` (``key_`` + 16 hex digits of its SHA-256)."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return KEY_ID_PREFIX + hashlib.sha256(data).hexdigest()[:16]


def scoped_idempotency_key(api_key_id: str | None, key: str | None) -> str | None:
    """The Idempotency-Key as stored: ``<key id>:<key>`` when the request carried an API
    key, the key unchanged on an open API (no key ids); a scoped value longer than the
    column becomes ``<key id>:sha256:<hex of the key>``."""
    if key is None or api_key_id is None:
        return key
    scoped = f"{api_key_id}:{key}"
    if len(scoped) <= MAX_STORED_KEY:
        return scoped
    return f"{api_key_id}:sha256:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"
