"""The pieces every artifact store shares, and the local one: ``ARTIFACT_DIR`` itself
(see :mod:`service.core.store` for the interface and the layout)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
CACHE_DIRNAME = ".cache"


class ArtifactUnavailable(OSError):
    """An artifact cannot be read: ``code`` is ``artifact_missing``, ``artifact_corrupt``
    (a size or sha256 differs from the manifest) or ``artifact_store_unreachable``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_of(local_dir: Path) -> list[Path]:
    return sorted(p for p in local_dir.iterdir() if p.is_file() and not p.name.startswith("."))


class LocalStore:
    """``ARTIFACT_DIR`` as the store: refs are absolute directories (the behaviour before
    object storage; every process must mount the same directory at the same path)."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def local_dir(self, key: str) -> Path:
        """Where a process writes ``key``'s files before :meth:`put_dir`."""
        return (self.root / key).resolve()

    def put_dir(self, key: str, local_dir: Path) -> str:
        """Publish ``local_dir`` as ``key``; here the files are already in place."""
        target = self.local_dir(key)
        if Path(local_dir).resolve() != target:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(local_dir, target)
        return str(target)

    def fetch(self, ref: str) -> Path:
        """The directory of ``ref``.

        Raises:
            ArtifactUnavailable: ``artifact_missing`` when it is not there.
        """
        path = Path(ref)
        if not path.is_dir():
            raise ArtifactUnavailable("artifact_missing", f"{ref} does not exist")
        return path

    def exists(self, ref: str) -> bool:
        """True when ``ref``'s directory exists."""
        return Path(ref).is_dir()

    def delete(self, ref_or_key: str) -> None:
        """Remove an artifact (a ref, or a key prefix such as ``checkpoints/job_x``)."""
        path = Path(ref_or_key)
        if not path.is_absolute() and ref_or_key.endswith("/state"):  # the state is a file
            state = self.local_dir(ref_or_key).parent / "training_state.safetensors"
            state.unlink(missing_ok=True)
            return
        shutil.rmtree(path if path.is_absolute() else self.local_dir(ref_or_key), True)

    def check(self) -> None:
        """Nothing to reach beyond ``ARTIFACT_DIR`` (the readiness probe writes there)."""

    def artifacts(self, top: str) -> list[tuple[str, float]]:
        """``(key, modified unix time)`` of every artifact under ``top`` (``models``,
        ``adapters``: one level; ``checkpoints``: ``checkpoints/{job}/{epoch dir}``, and
        ``checkpoints/{job}/state`` for a training-state file)."""
        base = self.root / top
        if not base.is_dir():
            return []
        found = []
        for entry in base.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if top != "checkpoints":
                found.append((f"{top}/{entry.name}", entry.stat().st_mtime))
                continue
            for sub in entry.iterdir():
                if sub.is_dir() and not sub.name.startswith("."):
                    found.append((f"{top}/{entry.name}/{sub.name}", sub.stat().st_mtime))
                elif sub.name == "training_state.safetensors":
                    found.append((f"{top}/{entry.name}/state", sub.stat().st_mtime))
        return found

    def usage_bytes(self) -> int:
        """Bytes under ``models/``, ``adapters/`` and ``checkpoints/``."""
        return sum(
            p.stat().st_size
            for sub in ("models", "adapters", "checkpoints")
            for p in (self.root / sub).rglob("*")
            if p.is_file()
        )
