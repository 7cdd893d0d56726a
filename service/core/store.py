"""The artifact store behind ``ARTIFACT_URL``: where published models, adapters and
checkpoints are kept, and the one interface every process reads and writes them through.

Every artifact is a directory of files with a *key* (its path under ``ARTIFACT_DIR``, e.g.
``models/mdl_x``, ``adapters/adp_x``, ``checkpoints/job_x/epoch-0002``,
``checkpoints/job_x/state``). Processes write the files under ``ARTIFACT_DIR/{key}`` first,
then :meth:`ArtifactStore.put_dir` publishes them and returns the *ref* that records keep.

- ``LocalStore`` (``ARTIFACT_URL`` empty, the default): ``ARTIFACT_DIR`` is the store (one
  filesystem that every process shares); a ref is the absolute directory, publishing is a
  no-op (the writers already replace files atomically), fetching returns the directory.
- ``S3Store`` (``ARTIFACT_URL=s3://bucket/prefix``, boto3): ``put_dir`` uploads the files to
  ``{prefix}/{key}/v/{token}/{name}`` (a temporary, never-read version), then writes
  ``{prefix}/{key}/manifest.json`` (version, each file's size and sha256): one PUT, so an
  artifact becomes visible only complete. Older versions are then deleted. A ref is
  ``s3://bucket/prefix/key``. :meth:`fetch` reads the manifest, downloads the version into a
  local cache (``ARTIFACT_DIR/.cache``, at most ``ARTIFACT_CACHE_BYTES``, least recently used
  evicted first), verifies every sha256, and returns the cached directory. A missing or
  corrupt object raises :class:`ArtifactUnavailable` (an ``OSError``, so the callers' "files
  cannot be read" paths give their coded 503 / failed job).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from service.core.local_store import (
    CACHE_DIRNAME,
    MANIFEST,
    ArtifactUnavailable,
    LocalStore,
    sha256_file,
)
from service.core.s3_store import S3Store, _cache_stem
from service.core.settings import Settings

__all__ = [
    "CACHE_DIRNAME",
    "MANIFEST",
    "ArtifactStore",
    "ArtifactUnavailable",
    "LocalStore",
    "S3Store",
    "_cache_stem",
    "sha256_file",
]

ArtifactStore = LocalStore | S3Store


_STORES: dict[tuple, ArtifactStore] = {}
_STORES_LOCK = threading.Lock()


def get_store(settings: Settings) -> ArtifactStore:
    """The store ``settings`` name (one instance per configuration and process)."""
    ident = (
        settings.artifact_url,
        str(settings.artifact_dir.resolve()),
        settings.s3_endpoint_url,
        settings.s3_access_key_id,
        settings.artifact_cache_bytes,
    )
    with _STORES_LOCK:
        store = _STORES.get(ident)
        if store is None:
            if settings.artifact_url.startswith("s3://"):
                store = S3Store(settings)
            elif settings.artifact_url:
                raise ValueError(
                    f"ARTIFACT_URL must be empty or s3://…, not {settings.artifact_url}"
                )
            else:
                store = LocalStore(settings.artifact_dir)
            _STORES[ident] = store
    return store


def fetch(settings: Settings, ref: str | Path) -> Path:
    """The local directory of ``ref`` through the configured store (see :meth:`S3Store.fetch`)."""
    return get_store(settings).fetch(str(ref))


def publish(settings: Settings, local_dir: Path, keep_local: bool = False) -> str:
    """Publish a directory written under ``ARTIFACT_DIR`` (its key is its relative path);
    with an ``s3://`` store the local copy is then removed unless ``keep_local``.
    Returns the ref to record."""
    store = get_store(settings)
    local_dir = Path(local_dir).resolve()
    key = key_of_dir(settings, local_dir)
    ref = store.put_dir(key, local_dir)
    if store.remote and not keep_local:
        shutil.rmtree(local_dir, ignore_errors=True)
    return ref


def delete(settings: Settings, ref_or_dir: str | Path) -> None:
    """Delete an artifact by ref, by local directory under ``ARTIFACT_DIR``, or by key."""
    store = get_store(settings)
    text = str(ref_or_dir)
    if store.remote and not text.startswith("s3://"):
        path = Path(text)
        if path.is_absolute():
            shutil.rmtree(path, ignore_errors=True)
            try:
                text = path.resolve().relative_to(settings.artifact_dir.resolve()).as_posix()
            except ValueError:
                return
    store.delete(text)


def key_of_dir(settings: Settings, local_dir: Path) -> str:
    """The key of a directory under ``ARTIFACT_DIR`` (its relative path, ``/``-separated)."""
    return Path(local_dir).resolve().relative_to(settings.artifact_dir.resolve()).as_posix()


def ref_for(settings: Settings, local_dir: Path) -> str:
    """The ref :func:`publish` gives ``local_dir`` (without publishing anything)."""
    store = get_store(settings)
    if isinstance(store, S3Store):
        return store.ref(key_of_dir(settings, local_dir))
    return str(Path(local_dir).resolve())


_USAGE: dict[tuple, tuple[float, int]] = {}
USAGE_TTL_SECONDS = 60.0


def usage_bytes_cached(settings: Settings) -> int | None:
    """The store's bytes (:meth:`usage_bytes`), recounted at most every
    :data:`USAGE_TTL_SECONDS`; None when it cannot be counted now."""
    import time

    key = (settings.artifact_url, str(settings.artifact_dir))
    now = time.monotonic()
    hit = _USAGE.get(key)
    if hit is not None and now - hit[0] < USAGE_TTL_SECONDS:
        return hit[1]
    try:
        value = get_store(settings).usage_bytes()
    except OSError:
        return None
    _USAGE[key] = (now, value)
    return value
