"""Model checkpoints and resumable training state, without pickle.

* A model directory holds ``model.safetensors`` (the state dict) and ``config.json``
  (architecture, classes, parent model, extras), enough to rebuild the MLP with nothing
  else. Written to a temporary sibling directory, then renamed into place.
* A training-state file is one safetensors file: tensors for the weights, the optimizer
  state and RNG states, plus a JSON document in its metadata (finished epoch, optimizer
  hyper-parameters, generator names, caller extras). Written to a temporary file, fsynced,
  then ``os.replace``d over the previous one, so a crash leaves the old file intact.

Loading uses ``safetensors`` and ``json`` only; a pickle file is rejected.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load, load_file, save
from torch import nn

from models.classifier import MLP, MLPConfig
from models.data import check_classes
from models.lora import lora_layers

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable (e.g. a pickle) or does not fit the model."""


@dataclass
class ModelMeta:
    """What ``config.json`` says about a saved model."""

    config: MLPConfig
    classes: tuple[int, ...]
    parent_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def write_dir_atomically(directory: str | Path, write: Callable[[Path], None]) -> None:
    """Have ``write(tmp_dir)`` fill a temporary sibling directory, then rename it to ``directory``.

    An existing ``directory`` is moved aside first and deleted only after the rename
    succeeded (restored if it failed). On any error the temporary directory is removed
    and the exception re-raised.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write(tmp)
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old.exists():
                os.replace(old, target)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` as a safetensors file (metadata ``format: pt``) through Python's
    file I/O, so that a full disk raises ``OSError`` with errno ENOSPC (safetensors' own
    ``save_file`` raises a ``SafetensorError`` that carries no errno). The bytes are those
    ``save_file`` writes.
    """
    with open(path, "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))


def write_file_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, then ``os.replace``.

    Raises whatever the filesystem raises; the previous ``path`` is then untouched and the
    temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cpu_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_model(
    directory: str | Path,
    model: MLP,
    classes: Sequence[int],
    parent_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save a plain MLP as ``model.safetensors`` + ``config.json`` in ``directory``, atomically.

    ``config.json`` is ``{"architecture": "mlp", "config": ..., "classes": [...],
    "parent_id": ..., **extra}``.

    Raises:
        ValueError: ``model`` still has LoRA layers (merge with ``lora.merge_and_unload``
            or save the adapter with ``adapter_io.save_adapter``), ``classes`` does not fit
            the head, or ``extra`` reuses a reserved key.
    """
    if lora_layers(model):
        raise ValueError("model has LoRA layers: merge_and_unload() it or save the adapter")
    classes = check_classes(classes)
    if len(classes) != model.config.n_classes:
        raise ValueError(f"{len(classes)} classes for a head of {model.config.n_classes}")
    meta: dict[str, Any] = {
        "architecture": "mlp",
        "config": model.config.to_dict(),
        "classes": list(classes),
        "parent_id": parent_id,
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"extra key {key!r} is reserved")
        meta[key] = value
    text = json.dumps(meta, indent=2, sort_keys=True)
    tensors = _cpu_tensors(model.state_dict())

    def write(tmp: Path) -> None:
        write_safetensors(tmp / MODEL_FILE, tensors)
        (tmp / CONFIG_FILE).write_text(text)

    write_dir_atomically(directory, write)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _load_state(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Strictly copy ``tensors`` into ``model``: same keys, shapes and dtypes, all finite."""
    expected = model.state_dict()
    if set(tensors) != set(expected):
        missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
        raise CheckpointError(
            f"{where}: missing keys {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    for key, ref in expected.items():
        t = tensors[key]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise CheckpointError(
                f"{where}: {key} is {t.dtype} {tuple(t.shape)}, "
                f"expected {ref.dtype} {tuple(ref.shape)}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{where}: {key} has non-finite values")
    model.load_state_dict(tensors, strict=True)


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MLP, ModelMeta]:
    """Rebuild a model saved by :func:`save_model`; it is returned in eval mode on ``device``.

    Raises:
        CheckpointError (a ValueError): files missing or unreadable (a pickle file named
            ``model.safetensors`` is rejected), bad config, or weights that do not fit it.
    """
    directory = Path(directory)
    meta_raw = _read_json(directory / CONFIG_FILE)
    if meta_raw.get("architecture") != "mlp":
        raise CheckpointError(f"unsupported architecture {meta_raw.get('architecture')!r}")
    try:
        config = MLPConfig.from_dict(meta_raw.get("config"))
        classes = check_classes(meta_raw.get("classes") or ())
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"bad {directory / CONFIG_FILE}: {exc}") from exc
    if len(classes) != config.n_classes:
        raise CheckpointError(f"{len(classes)} classes for a head of {config.n_classes}")
    parent_id = meta_raw.get("parent_id")
    extra = {
        k: v
        for k, v in meta_raw.items()
        if k not in ("architecture", "config", "classes", "parent_id")
    }
    try:
        tensors = load_file(str(directory / MODEL_FILE), device="cpu")
    except Exception as exc:  # safetensors raises its own error types on malformed files
        raise CheckpointError(
            f"cannot read {directory / MODEL_FILE} as safetensors: {exc}"
        ) from exc
    model = MLP(config)
    _load_state(model, tensors, str(directory / MODEL_FILE))
    model.to(device).eval()
    return model, ModelMeta(config=config, classes=classes, parent_id=parent_id, extra=extra)


# --- resumable training state -------------------------------------------------------------


def _optimizer_to_flat(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-ready remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        plain: dict[str, Any] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                plain[name] = value
        plain_state[str(idx)] = plain
    return tensors, {"param_groups": sd["param_groups"], "state": plain_state}


def _optimizer_from_flat(
    tensors: Mapping[str, torch.Tensor], doc: Mapping[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {
        int(idx): dict(plain) for idx, plain in doc.get("state", {}).items()
    }
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    groups = []
    for group in doc["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    extra: Mapping[str, Any] | None = None,
    *,
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Write a resumable training checkpoint to ``path`` atomically (temp file, ``os.replace``).

    Holds the model's full state dict, the optimizer state, ``epoch`` (the last *finished*
    epoch, 1-based), the CPU (and CUDA) default RNG states, the states of ``generators``
    (e.g. the data-shuffling generator) and JSON-serialisable ``extra``.

    Raises:
        TypeError: ``extra`` or the optimizer hyper-parameters are not JSON-serialisable.
        OSError: the write failed (the previous file at ``path`` is then intact).
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_tensors, optim_doc = _optimizer_to_flat(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    gen_names = sorted(generators or {})
    for name in gen_names:
        tensors[f"gen.{name}"] = generators[name].get_state()  # type: ignore[index]
    doc = {
        "version": TRAINING_STATE_VERSION,
        "epoch": int(epoch),
        "optimizer": optim_doc,
        "generators": gen_names,
        "extra": dict(extra or {}),
    }
    blob = save(_cpu_tensors(tensors), metadata={"training_state": json.dumps(doc)})
    write_file_atomically(path, blob)


def _read_training_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        data = path.read_bytes()
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        doc = json.loads(header["__metadata__"]["training_state"])
    except Exception as exc:  # malformed safetensors, pickle files, missing metadata
        raise CheckpointError(f"{path} is not a training-state file: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != TRAINING_STATE_VERSION:
        raise CheckpointError(f"{path}: unsupported training-state version")
    return tensors, doc


def read_training_meta(path: str | Path) -> dict[str, Any] | None:
    """The JSON part of a training checkpoint (``epoch``, ``extra``, ...), or None if absent.

    Raises:
        CheckpointError: the file exists but is not a training-state file.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            doc = json.loads((f.metadata() or {})["training_state"])
    except Exception as exc:  # malformed safetensors, pickle files, missing metadata
        raise CheckpointError(f"{path} is not a training-state file: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != TRAINING_STATE_VERSION:
        raise CheckpointError(f"{path}: unsupported training-state version")
    return doc


def load_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    generators: Mapping[str, torch.Generator] | None = None,
) -> int | None:
    """Restore a checkpoint written by :func:`save_training_state`.

    Restores the weights, the optimizer state, the CPU (and, when present and available,
    CUDA) RNG states and the named ``generators``.

    Returns:
        The last finished epoch, or None when ``path`` does not exist (nothing restored).

    Raises:
        CheckpointError: unreadable file (pickles included), or state that does not fit
            ``model`` / ``optimizer`` / ``generators``.
    """
    path = Path(path)
    if not path.exists():
        return None
    tensors, doc = _read_training_file(path)
    model_tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_state(model, model_tensors, str(path))
    optim_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    try:
        optimizer.load_state_dict(_optimizer_from_flat(optim_tensors, doc["optimizer"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit: {exc}") from exc
    for name in generators or {}:
        if f"gen.{name}" not in tensors:
            raise CheckpointError(f"{path}: no state for generator {name!r}")
        generators[name].set_state(tensors[f"gen.{name}"])  # type: ignore[index]
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [
        tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors
    ]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return int(doc["epoch"])
