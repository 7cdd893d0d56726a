"""Importing a LoRA adapter trained elsewhere: untrusted uploads in, a registered adapter out.

The upload is either the PEFT directory's two files (``adapter_config.json``,
``adapter_model.safetensors``) or one zip holding exactly those two at its top level.
Everything else is refused *by name, before any byte is read*: pickle formats (``.bin``,
``.pt``, ``.pth``, ``.pkl``, ...), unknown files, duplicate or path-traversing zip members.
Zips are checked from their central directory first (member count, declared sizes against
``max_adapter_bytes``, compression ratio, encryption, compression method) and then read
with a hard byte cap that does not trust those declarations.

The two files are staged in a temporary directory beside the final one under the artifact
dir, validated against the base model with :func:`models.adapter_io.load_adapter` (peft
type, tensor names, shapes, dtype, finite values), renamed into place atomically, and only
then registered. On any failure nothing is left: no directory, no record.

Every refusal is an :class:`~service.core.errors.ApiError` (4xx, error envelope).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sqlalchemy.orm import Session

from models.adapter_io import (
    CONFIG_NAME,
    MAX_CONFIG_BYTES,
    WEIGHTS_NAME,
    AdapterError,
    load_adapter,
)
from models.checkpoint import write_dir_atomically
from models.classifier import MLPConfig
from models.lora import AdapterWeights
from service.core import store
from service.core.artifacts import adapter_dir
from service.core.errors import ApiError, is_disk_full, storage_full
from service.core.settings import Settings
from service.core.vocab import ADAPTER_PREFIX, new_id
from service.db.adapter_records import register_adapter
from service.db.model_records import require_model
from service.db.tables import AdapterRecord

log = logging.getLogger(__name__)

ALLOWED_NAMES = (CONFIG_NAME, WEIGHTS_NAME)
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
MAX_ZIP_MEMBERS = 16
MAX_COMPRESSION_RATIO = 100  # uncompressed / compressed, for members over 1 MiB
RATIO_CHECK_MIN_BYTES = 1 << 20
_COPY_CHUNK = 1 << 16


@dataclass
class Upload:
    """One uploaded file: the client's file name and a readable, seekable binary stream."""

    filename: str
    file: BinaryIO


def _bad(code: str, message: str, status: int = 422) -> ApiError:
    return ApiError(status, code, message, "files")


def _refuse_pickle(name: str) -> None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise _bad(
            "pickle_not_allowed",
            f"{name!r} is a pickle format ({suffix}) and is never opened: upload "
            f"{WEIGHTS_NAME} (safetensors) instead.",
            415,
        )


def _limit_for(name: str, max_bytes: int) -> int:
    return MAX_CONFIG_BYTES if name == CONFIG_NAME else max_bytes


def classify_uploads(uploads: Sequence[Upload]) -> tuple[dict[str, Upload], Upload | None]:
    """Sort uploads into the two loose PEFT files or one zip, by name only (nothing is read).

    Returns:
        ``({name: upload}, None)`` for loose files, ``({}, zip_upload)`` for a zip.
    Raises:
        ApiError: 415 ``pickle_not_allowed``; 422 ``unexpected_file`` (unknown or duplicate
            name, a zip mixed with loose files, several zips) or ``adapter_missing_file``.
    """
    loose: dict[str, Upload] = {}
    archives: list[Upload] = []
    for upload in uploads:
        name = PurePosixPath(upload.filename.replace("\\", "/")).name
        _refuse_pickle(name)
        if name.lower().endswith(".zip"):
            archives.append(upload)
        elif name in ALLOWED_NAMES and name not in loose:
            loose[name] = upload
        elif name in ALLOWED_NAMES:
            raise _bad("unexpected_file", f"{name!r} was uploaded twice.")
        else:
            raise _bad(
                "unexpected_file",
                f"Unexpected file {name!r}: upload {CONFIG_NAME} and {WEIGHTS_NAME}, "
                "or one .zip holding exactly those two.",
            )
    if archives and loose or len(archives) > 1:
        raise _bad("unexpected_file", "Upload either the two adapter files or one zip, not both.")
    if archives:
        return {}, archives[0]
    missing = [n for n in ALLOWED_NAMES if n not in loose]
    if missing:
        raise _bad("adapter_missing_file", f"Missing adapter file(s): {', '.join(missing)}.")
    return loose, None


def _copy_limited(src: BinaryIO, dst: Path, limit: int, what: str) -> int:
    """Copy at most ``limit`` bytes of ``src`` to ``dst``; returns bytes copied.

    Raises:
        ApiError: 413 ``adapter_too_large`` as soon as ``src`` yields more than ``limit``.
    """
    copied = 0
    with open(dst, "wb") as out:
        while chunk := src.read(_COPY_CHUNK):
            copied += len(chunk)
            if copied > limit:
                raise _bad("adapter_too_large", f"{what} exceeds {limit} bytes.", 413)
            out.write(chunk)
    return copied


def _is_traversal(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    first = path.parts[0] if path.parts else ""
    return path.is_absolute() or ".." in path.parts or ":" in first


def check_zip_members(archive: zipfile.ZipFile, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """Vet a zip's central directory before reading any member.

    Args:
        max_bytes: cap on the weights member and on the total uncompressed size (bytes).
    Returns:
        ``{name: info}`` for exactly the two allowed members.
    Raises:
        ApiError: 415 ``pickle_not_allowed``; 413 ``adapter_too_large``; 422 ``invalid_zip``
            (too many members, path traversal, encryption, unsupported compression,
            suspicious compression ratio), ``unexpected_file`` or ``adapter_missing_file``.
    """
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise _bad("invalid_zip", f"The zip has {len(infos)} entries; it must hold 2 files.")
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if _is_traversal(name):
            raise _bad("invalid_zip", f"Zip member {name!r} has an unsafe path (path traversal).")
        _refuse_pickle(name)
        if name not in ALLOWED_NAMES or info.is_dir():
            raise _bad(
                "unexpected_file",
                f"Unexpected zip member {name!r}: the zip must hold exactly {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} at its top level.",
            )
        if name in members:
            raise _bad("invalid_zip", f"Zip member {name!r} appears twice.")
        if info.flag_bits & 0x1:
            raise _bad("invalid_zip", f"Zip member {name!r} is encrypted.")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _bad("invalid_zip", f"Zip member {name!r} uses an unsupported compression.")
        limit = _limit_for(name, max_bytes)
        if info.file_size > limit:
            raise _bad(
                "adapter_too_large", f"{name} unzips to {info.file_size} bytes, over {limit}.", 413
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_CHECK_MIN_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise _bad(
                "invalid_zip",
                f"Zip member {name!r} expands {ratio:.0f}x (limit {MAX_COMPRESSION_RATIO}x): "
                "refused as a likely zip bomb.",
            )
        total += info.file_size
        members[name] = info
    if total > max_bytes:
        raise _bad("adapter_too_large", f"The zip unpacks to {total} bytes, over {max_bytes}.", 413)
    missing = [n for n in ALLOWED_NAMES if n not in members]
    if missing:
        raise _bad("adapter_missing_file", f"The zip lacks {', '.join(missing)}.")
    return members


def stage_files(
    loose: dict[str, Upload], archive: Upload | None, directory: Path, max_bytes: int
) -> None:
    """Write the two adapter files into ``directory`` under their fixed names.

    Raises:
        ApiError: see :func:`check_zip_members`; 422 ``invalid_zip`` for an unreadable or
            corrupt zip (bad CRC, truncated); 413 ``adapter_too_large`` past the caps.
    """
    if archive is None:
        for name, upload in loose.items():
            upload.file.seek(0)
            _copy_limited(upload.file, directory / name, _limit_for(name, max_bytes), name)
        return
    archive.file.seek(0)
    try:
        with zipfile.ZipFile(archive.file) as zf:
            members = check_zip_members(zf, max_bytes)
            for name, info in members.items():
                with zf.open(info) as src:
                    _copy_limited(src, directory / name, _limit_for(name, max_bytes), name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise _bad("invalid_zip", f"{archive.filename!r} is not a readable zip: {exc}") from exc


def parse_classes(text: str | None, default: Sequence[int], n_classes: int) -> list[int]:
    """The digit of each head output: ``text`` like ``"5,6,7,8,9"``, else ``default``.

    Raises:
        ApiError: 422 ``invalid_classes`` unless ``n_classes`` distinct digits 0-9.
    """
    if text is None or not text.strip():
        return [int(c) for c in default]
    parts = [p.strip() for p in text.split(",")]
    if not all(len(p) == 1 and p in "0123456789" for p in parts):
        raise ApiError(
            422,
            "invalid_classes",
            f"classes must be comma-separated digits 0-9, got {text!r}.",
            "classes",
        )
    digits = [int(p) for p in parts]
    if len(set(digits)) != len(digits) or len(digits) != n_classes:
        raise ApiError(
            422,
            "invalid_classes",
            f"classes must be {n_classes} distinct digits (the base model's head size), "
            f"got {text!r}.",
            "classes",
        )
    return digits


def import_adapter(
    settings: Settings,
    session: Session,
    *,
    base_model_id: str,
    uploads: Sequence[Upload],
    classes: str | None = None,
) -> AdapterRecord:
    """Validate, store and register an uploaded adapter for ``base_model_id``; commits.

    Args:
        settings: ``artifact_dir`` and ``max_adapter_bytes`` (bytes) are used.
        session: database session; the record is committed here.
        uploads: the uploaded files (see :func:`classify_uploads`).
        classes: optional comma-separated digits, one per output of the base head.
    Returns:
        The committed adapter record (``source="imported"``).
    Raises:
        ApiError: 404 ``model_not_found``; 413/415/422 for bad uploads (see the helpers);
            422 with the :class:`~models.adapter_io.AdapterError` code when the files do
            not fit the base model; 507 ``storage_full`` when the disk is full (nothing
            is left of the upload).
    """
    loose, archive = classify_uploads(uploads)
    base = require_model(session, base_model_id, "base_model_id")
    base_config = MLPConfig.from_dict(dict(base.architecture))
    digits = parse_classes(classes, base.classes, base_config.n_classes)

    adapter_id = new_id(ADAPTER_PREFIX)
    target = adapter_dir(settings, adapter_id)
    holder: dict[str, AdapterWeights] = {}

    def write(tmp: Path) -> None:
        stage_files(loose, archive, tmp, settings.max_adapter_bytes)
        holder["weights"] = load_adapter(tmp, base_config, max_bytes=settings.max_adapter_bytes)

    try:
        write_dir_atomically(target, write)
    except AdapterError as exc:
        message = f"The adapter does not fit model {base_model_id!r}: {exc}"
        raise ApiError(422, exc.code, message, "files") from exc
    except OSError as exc:  # the temporary directory is already removed
        if is_disk_full(exc):
            raise storage_full("adapter") from exc
        raise
    weights = holder["weights"]
    try:
        ref = store.publish(settings, target)  # into the artifact store (s3:// or local)
        record = register_adapter(
            session,
            adapter_id=adapter_id,
            base_model_id=base_model_id,
            job_id=None,
            source="imported",
            lora_config=weights.config,
            trainable_parameters=weights.n_parameters,
            classes=digits,
            test_accuracy=None,
            path=ref,
        )
        session.commit()
    except BaseException:
        session.rollback()
        store.delete(settings, target)
        raise
    log.info("imported adapter %s for model %s (%s)", adapter_id, base_model_id, target)
    return record
