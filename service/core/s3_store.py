"""The S3 artifact store (boto3; MinIO, moto or AWS) with its bounded local cache; see
:mod:`service.core.store` for the publishing protocol (versions, then a manifest)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

from service.core.local_store import (
    CACHE_DIRNAME,
    MANIFEST,
    ArtifactUnavailable,
    LocalStore,
    _files_of,
    sha256_file,
)
from service.core.settings import Settings


class S3Store:
    """An S3 bucket (MinIO, moto, AWS) as the store, with a bounded local cache."""

    remote = True

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        url = settings.artifact_url.removeprefix("s3://")
        self.bucket, _, prefix = url.partition("/")
        self.prefix = prefix.strip("/")
        self.root = settings.artifact_dir
        self.cache_dir = self.root / CACHE_DIRNAME
        self.cache_bytes = settings.artifact_cache_bytes
        secret = settings.s3_secret_access_key
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.s3_region,
            config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=30),
        )
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ names

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ref(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self._object(key)}"

    def key_of(self, ref_or_key: str) -> str:
        """The key of a ref (a key is returned as it is)."""
        if not ref_or_key.startswith("s3://"):
            return ref_or_key.strip("/")
        head = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        if not ref_or_key.startswith(head):
            raise ArtifactUnavailable("artifact_missing", f"{ref_or_key} is not in {head}")
        return ref_or_key[len(head) :]

    def local_dir(self, key: str) -> Path:
        """Scratch directory where this process writes ``key``'s files before publishing."""
        return (self.root / key).resolve()

    # ------------------------------------------------------------------ write

    def put_dir(self, key: str, local_dir: Path) -> str:
        """Upload ``local_dir``'s files as a new version of ``key``, then the manifest.

        Returns:
            The ref. Raises ``ArtifactUnavailable`` (``artifact_store_unreachable``) when
            the store refuses or cannot be reached.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        token = secrets.token_hex(8)
        files = {}
        try:
            for path in _files_of(Path(local_dir)):
                files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
                name = self._object(f"{key}/v/{token}/{path.name}")
                self.client.upload_file(str(path), self.bucket, name)
            manifest = {"version": token, "files": files}
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._object(f"{key}/{MANIFEST}"),
                Body=json.dumps(manifest).encode(),
                ContentType="application/json",
            )
            for name in self._list(f"{key}/v/"):
                if not name.startswith(self._object(f"{key}/v/{token}/")):
                    self.client.delete_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactUnavailable("artifact_store_unreachable", f"put {key}: {exc}") from exc
        return self.ref(key)

    def delete(self, ref_or_key: str) -> None:
        """Delete every object under the key (its manifest first), its cache and scratch."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_of(ref_or_key)
        try:
            names = self._list(f"{key}/")
            for name in sorted(names, key=lambda n: not n.endswith(MANIFEST)):
                self.client.delete_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactUnavailable("artifact_store_unreachable", f"delete {key}: {exc}") from exc
        shutil.rmtree(self.local_dir(key), ignore_errors=True)
        with self._lock:
            for entry in self._entries():
                if entry.name.startswith(_cache_stem(key)):
                    shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ read

    def manifest(self, ref_or_key: str) -> dict[str, Any]:
        """The published manifest of a key.

        Raises:
            ArtifactUnavailable: ``artifact_missing`` (never published or deleted),
                ``artifact_corrupt`` (unreadable manifest), ``artifact_store_unreachable``.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_of(ref_or_key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object(f"{key}/{MANIFEST}"))
            data = json.loads(body["Body"].read())
            if not isinstance(data.get("files"), dict) or not data.get("version"):
                raise ValueError("no version or files")
            return data
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ArtifactUnavailable("artifact_missing", f"{key} is not in the store") from exc
            raise ArtifactUnavailable("artifact_store_unreachable", f"{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise ArtifactUnavailable("artifact_store_unreachable", f"{key}: {exc}") from exc
        except ValueError as exc:
            raise ArtifactUnavailable("artifact_corrupt", f"{key}: bad manifest: {exc}") from exc

    def exists(self, ref_or_key: str) -> bool:
        """True when the key has a published manifest."""
        try:
            self.manifest(ref_or_key)
        except ArtifactUnavailable as exc:
            if exc.code == "artifact_missing":
                return False
            raise
        return True

    def fetch(self, ref: str) -> Path:
        """A local directory holding ``ref``'s published files, sha256-verified.

        A ref that is a local directory (recorded before ``ARTIFACT_URL`` was set) is
        returned as it is when it exists.

        Raises:
            ArtifactUnavailable: missing, corrupt (size or sha256 differs) or unreachable.
        """
        if not ref.startswith("s3://"):
            return LocalStore(self.root).fetch(ref)
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_of(ref)
        manifest = self.manifest(key)
        entry = self.cache_dir / f"{_cache_stem(key)}{manifest['version']}"
        with self._lock:
            if entry.is_dir():
                if _entry_intact(entry, manifest):
                    os.utime(entry)
                    return entry
                shutil.rmtree(entry, ignore_errors=True)  # damaged locally: fetch again
        tmp = self.cache_dir / f".tmp-{secrets.token_hex(6)}"
        tmp.mkdir(parents=True)
        try:
            for name, want in manifest["files"].items():
                path = tmp / Path(name).name
                obj = self._object(f"{key}/v/{manifest['version']}/{name}")
                self.client.download_file(self.bucket, obj, str(path))
                size, digest = path.stat().st_size, sha256_file(path)
                if size != want["size"] or digest != want["sha256"]:
                    raise ArtifactUnavailable(
                        "artifact_corrupt",
                        f"{key}/{name}: {size} bytes sha256 {digest[:12]}…, manifest says "
                        f"{want['size']} bytes sha256 {want['sha256'][:12]}…",
                    )
        except ClientError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            code = exc.response.get("Error", {}).get("Code")
            why = (
                "artifact_missing" if code in ("NoSuchKey", "404") else "artifact_store_unreachable"
            )
            raise ArtifactUnavailable(why, f"{key}: {exc}") from exc
        except BotoCoreError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ArtifactUnavailable("artifact_store_unreachable", f"{key}: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._lock:
            if entry.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.rename(entry)
            for stale in self._entries():  # older versions of the same key
                if stale.name.startswith(_cache_stem(key)) and stale != entry:
                    shutil.rmtree(stale, ignore_errors=True)
            self._evict(keep=entry)
        return entry

    def check(self) -> None:
        """Raise ``ArtifactUnavailable`` (``artifact_store_unreachable``) unless the bucket
        answers a HEAD request."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactUnavailable(
                "artifact_store_unreachable", f"{self.bucket}: {exc}"
            ) from exc

    def artifacts(self, top: str) -> list[tuple[str, float]]:
        """``(key, manifest's LastModified as unix time)`` of every published artifact
        under ``top`` (``models``, ``adapters``, ``checkpoints``)."""
        head = self._object(f"{top}/")
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=head
        ):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(f"/{MANIFEST}"):
                    key = self.key_of(f"s3://{self.bucket}/{obj['Key']}").removesuffix(
                        f"/{MANIFEST}"
                    )
                    found.append((key, obj["LastModified"].timestamp()))
        return found

    def cached_bytes(self) -> int:
        """Bytes in the local cache now."""
        return sum(_dir_bytes(e) for e in self._entries())

    def usage_bytes(self) -> int:
        """Bytes of every object under the prefix (manifests included)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return sum(size for _, size in self._list_sized(""))
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactUnavailable("artifact_store_unreachable", str(exc)) from exc

    # ------------------------------------------------------------------ helpers

    def _list_sized(self, key_prefix: str) -> list[tuple[str, int]]:
        prefix = (
            self._object(key_prefix) if key_prefix else (self.prefix + "/" if self.prefix else "")
        )
        out: list[tuple[str, int]] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            out.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        return out

    def _list(self, key_prefix: str) -> list[str]:
        return [name for name, _ in self._list_sized(key_prefix)]

    def _entries(self) -> list[Path]:
        if not self.cache_dir.is_dir():
            return []
        return [e for e in self.cache_dir.iterdir() if e.is_dir() and not e.name.startswith(".")]

    def _evict(self, keep: Path) -> None:
        """Remove least recently used entries until the cache fits ``cache_bytes`` (the
        entry just fetched stays, even when it alone is larger)."""
        entries = sorted(self._entries(), key=lambda e: e.stat().st_mtime)
        total = sum(_dir_bytes(e) for e in entries)
        for entry in entries:
            if total <= self.cache_bytes:
                break
            if entry == keep:
                continue
            total -= _dir_bytes(entry)
            shutil.rmtree(entry, ignore_errors=True)


def _entry_intact(entry: Path, manifest: dict[str, Any]) -> bool:
    """True when every file of ``manifest`` is in the cache entry with its size (the
    sha256 was checked when it was downloaded)."""
    for name, want in manifest["files"].items():
        path = entry / Path(name).name
        if not path.is_file() or path.stat().st_size != want["size"]:
            return False
    return True


def _cache_stem(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:16] + "-"


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
