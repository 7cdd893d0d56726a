"""The artifact store (service/core/store.py) against a real S3 server (moto, over HTTP):
publishing through a manifest, sha256 verification, the bounded cache, deletion; and the
local default."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core import store
from service.core.settings import Settings


def _write(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def _objects(backend: store.S3Store, key: str) -> list[str]:
    return sorted(backend._list(f"{key}/"))


def test_put_dir_publishes_a_manifest_and_fetch_verifies(s3_settings: Settings) -> None:
    backend = store.get_store(s3_settings)
    assert isinstance(backend, store.S3Store)
    local = _write(
        s3_settings.artifact_dir / "models/mdl_a", {"a.bin": b"x" * 1000, "c.json": b"{}"}
    )
    ref = store.publish(s3_settings, local)
    assert ref == f"s3://{backend.bucket}/artifacts/models/mdl_a"
    assert not local.exists()  # the scratch copy is gone: the store holds it
    manifest = backend.manifest(ref)
    assert manifest["files"]["a.bin"]["size"] == 1000
    assert manifest["files"]["a.bin"]["sha256"] == store.sha256_file(
        _write(Path(s3_settings.artifact_dir / "x"), {"a.bin": b"x" * 1000}) / "a.bin"
    )
    fetched = store.fetch(s3_settings, ref)
    assert (fetched / "a.bin").read_bytes() == b"x" * 1000
    assert fetched.is_relative_to(s3_settings.artifact_dir / store.CACHE_DIRNAME)
    assert store.fetch(s3_settings, ref) == fetched  # a cache hit
    (fetched / "a.bin").write_bytes(b"x" * 10)  # damaged on this host: downloaded again
    assert (store.fetch(s3_settings, ref) / "a.bin").read_bytes() == b"x" * 1000

    # Republishing the key replaces the version whole; the old version's objects go.
    old = manifest["version"]
    _write(local, {"a.bin": b"y" * 10})
    store.publish(s3_settings, local)
    names = _objects(backend, "models/mdl_a")
    assert not any(f"/v/{old}/" in n for n in names)
    assert (store.fetch(s3_settings, ref) / "a.bin").read_bytes() == b"y" * 10
    assert not (store.fetch(s3_settings, ref) / "c.json").exists()


def test_objects_without_a_manifest_are_not_visible(s3_settings: Settings) -> None:
    """An upload killed before its manifest leaves nothing a reader can load."""
    backend = store.get_store(s3_settings)
    backend.client.put_object(
        Bucket=backend.bucket, Key="artifacts/adapters/adp_half/v/abc/adapter.bin", Body=b"1"
    )
    ref = backend.ref("adapters/adp_half")
    assert not backend.exists(ref)
    with pytest.raises(store.ArtifactUnavailable) as caught:
        store.fetch(s3_settings, ref)
    assert caught.value.code == "artifact_missing"


def test_a_corrupt_object_is_refused_and_not_cached(s3_settings: Settings) -> None:
    backend = store.get_store(s3_settings)
    ref = store.publish(
        s3_settings, _write(s3_settings.artifact_dir / "adapters/adp_c", {"w.bin": b"w" * 500})
    )
    version = backend.manifest(ref)["version"]
    backend.client.put_object(
        Bucket=backend.bucket,
        Key=f"artifacts/adapters/adp_c/v/{version}/w.bin",
        Body=b"w" * 499 + b"X",  # same size, one byte flipped
    )
    with pytest.raises(store.ArtifactUnavailable) as caught:
        store.fetch(s3_settings, ref)
    assert caught.value.code == "artifact_corrupt"
    assert "sha256" in str(caught.value)
    assert backend.cached_bytes() == 0  # nothing half-downloaded is kept
    assert isinstance(caught.value, OSError)  # callers' "cannot read the files" paths

    backend.client.put_object(
        Bucket=backend.bucket, Key="artifacts/adapters/adp_c/manifest.json", Body=b"{not json"
    )
    with pytest.raises(store.ArtifactUnavailable) as caught:
        store.fetch(s3_settings, ref)
    assert caught.value.code == "artifact_corrupt"


def test_the_cache_stays_under_its_byte_bound_least_recently_used_first(
    s3_settings: Settings,
) -> None:
    size = 10_000
    backend = store.S3Store(s3_settings.model_copy(update={"artifact_cache_bytes": 3 * size}))
    refs = []
    for i in range(6):
        local = _write(s3_settings.artifact_dir / f"adapters/adp_{i}", {"w.bin": bytes([i]) * size})
        refs.append(backend.put_dir(f"adapters/adp_{i}", local))
    for i, ref in enumerate(refs):
        assert (backend.fetch(ref) / "w.bin").read_bytes() == bytes([i]) * size
        if i >= 1:
            backend.fetch(refs[0])  # keep adp_0 recently used
        assert backend.cached_bytes() <= 3 * size
    cached = {e.name for e in backend._entries()}
    assert len(cached) == 3
    stem0 = store._cache_stem("adapters/adp_0")
    assert any(name.startswith(stem0) for name in cached)  # used last: kept
    assert not any(name.startswith(store._cache_stem("adapters/adp_1")) for name in cached)

    # An entry larger than the whole bound is still served (and alone in the cache).
    big = _write(s3_settings.artifact_dir / "models/mdl_big", {"w.bin": b"b" * (4 * size)})
    assert (backend.fetch(backend.put_dir("models/mdl_big", big)) / "w.bin").stat().st_size
    assert len(backend._entries()) == 1


def test_delete_removes_every_object_of_a_prefix(s3_settings: Settings) -> None:
    backend = store.get_store(s3_settings)
    root = s3_settings.artifact_dir / "checkpoints/job_1"
    for epoch in (1, 2):
        store.publish(s3_settings, _write(root / f"epoch-000{epoch}", {"m.bin": b"m"}))
    other = store.publish(
        s3_settings,
        _write(s3_settings.artifact_dir / "checkpoints/job_10/epoch-0001", {"m.bin": b"n"}),
    )
    assert _objects(backend, "checkpoints/job_1")
    store.delete(s3_settings, root)  # a local directory names its key
    assert _objects(backend, "checkpoints/job_1") == []
    assert backend.exists(other)  # job_10 is not under job_1/
    assert backend.usage_bytes() > 0


def test_the_local_default_is_artifact_dir_itself(settings: Settings) -> None:
    backend = store.get_store(settings)
    assert isinstance(backend, store.LocalStore)
    local = _write(settings.artifact_dir / "models/mdl_l", {"a.bin": b"1"})
    ref = store.publish(settings, local)
    assert ref == str(local.resolve()) and local.is_dir()
    assert store.fetch(settings, ref) == local.resolve()
    store.delete(settings, ref)
    with pytest.raises(store.ArtifactUnavailable) as caught:
        store.fetch(settings, ref)
    assert caught.value.code == "artifact_missing"


@pytest.mark.parametrize("url", ["file:///tmp/x", "s3://", "minio://b"])
def test_artifact_url_must_be_s3(url: str) -> None:
    with pytest.raises(ValueError, match="ARTIFACT_URL"):
        Settings(artifact_url=url)
