"""``POST /adapters`` refuses every bad upload with a 4xx envelope and leaves nothing behind."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


def _expect(response, status: int, code: str, nothing_left: Callable[[], None]) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    nothing_left()
    return error["message"]


class _Payload:
    """A pickle that creates ``path`` when unpickled: proof that nobody unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def live_pickle(tmp_path: Path) -> tuple[bytes, Path]:
    marker = tmp_path / "unpickled"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(str(control)))).close()
    assert control.exists()  # the payload is live
    return pickle.dumps(_Payload(str(marker))), marker


# ------------------------------------------------------------------ pickles and file names


@pytest.mark.parametrize("name", ["adapter_model.bin", "adapter_model.pt", "x.pth", "w.pkl"])
def test_pickle_files_are_refused_unopened(
    post_adapter, client, base_model_id, peft_pair, live_pickle, nothing_left, name
):
    data, marker = live_pickle
    files = [(CONFIG, peft_pair.files()[CONFIG]), (name, data)]
    message = _expect(
        post_adapter(client, base_model_id, files), 415, "pickle_not_allowed", nothing_left
    )
    assert "safetensors" in message
    assert not marker.exists()


def test_pickle_inside_zip_is_refused_unopened(
    post_adapter, client, base_model_id, peft_pair, live_pickle, zip_bytes, nothing_left
):
    data, marker = live_pickle
    archive = zip_bytes([(CONFIG, peft_pair.files()[CONFIG]), ("adapter_model.bin", data)])
    response = post_adapter(client, base_model_id, [("a.zip", archive)])
    _expect(response, 415, "pickle_not_allowed", nothing_left)
    assert not marker.exists()


@pytest.mark.parametrize(
    "names, code",
    [
        ([CONFIG], "adapter_missing_file"),
        ([WEIGHTS], "adapter_missing_file"),
        ([CONFIG, WEIGHTS, "README.md"], "unexpected_file"),
        ([CONFIG, WEIGHTS, WEIGHTS], "unexpected_file"),
        ([CONFIG, WEIGHTS, "extra.zip"], "unexpected_file"),
        (["a.zip", "b.zip"], "unexpected_file"),
    ],
)
def test_wrong_set_of_files(
    post_adapter, client, base_model_id, peft_pair, zip_bytes, nothing_left, names, code
):
    good = peft_pair.files()
    archive = zip_bytes(list(good.items()))
    files = [(n, good.get(n, archive if n.endswith(".zip") else b"text")) for n in names]
    _expect(post_adapter(client, base_model_id, files), 422, code, nothing_left)


def test_unknown_base_model_is_404(post_adapter, client, migrated, peft_pair, nothing_left):
    response = post_adapter(client, "model_nope", list(peft_pair.files().items()))
    assert _expect(response, 404, "model_not_found", nothing_left)
    assert response.json()["error"]["param"] == "base_model_id"


def test_missing_form_fields_are_422(client, base_model_id, peft_pair, nothing_left):
    parts = [("files", (n, d)) for n, d in peft_pair.files().items()]
    _expect(client.post("/adapters", files=parts), 422, "validation_error", nothing_left)
    response = client.post("/adapters", data={"base_model_id": base_model_id})
    _expect(response, 422, "validation_error", nothing_left)


@pytest.mark.parametrize("classes", ["1,2", "a,b,c,d,e", "1,1,2,3,4", "10,1,2,3,4", "0,1,2,3,4,5"])
def test_bad_classes(post_adapter, client, base_model_id, peft_pair, nothing_left, classes):
    files = list(peft_pair.files().items())
    response = post_adapter(client, base_model_id, files, classes=classes)
    _expect(response, 422, "invalid_classes", nothing_left)


# ------------------------------------------------------------------ contents vs base model


def _mutate_tensors(peft_pair, change: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    tensors = load(peft_pair.files()[WEIGHTS])
    change(tensors)
    return save(tensors)


def _mutate_config(peft_pair, change: Callable[[dict], object]) -> bytes:
    doc = json.loads(peft_pair.files()[CONFIG])
    result = change(doc)
    return json.dumps(doc if result is None else result).encode()


A1, B1, B3 = (f"{PREFIX}linear1.lora_A.weight", f"{PREFIX}linear1.lora_B.weight",
              f"{PREFIX}linear3.lora_B.weight")  # fmt: skip


def _set(t: dict, key: str, value: torch.Tensor) -> None:
    t[key] = value


def _nan(t: dict) -> None:
    t[B1] = t[B1].clone()
    t[B1][3, 1] = float("nan")


def _inf(t: dict) -> None:
    t[A1] = t[A1].clone()
    t[A1][0, 0] = float("-inf")


TENSOR_CASES = {
    "wrong shape": (lambda t: _set(t, A1, torch.zeros(4, 783)), "adapter_shape_mismatch"),
    "head too wide": (lambda t: _set(t, B3, torch.zeros(10, 4)), "adapter_shape_mismatch"),
    "unexpected key": (lambda t: t.update({f"{PREFIX}linear1.lora_C.weight": t.pop(A1)}),
                       "adapter_unexpected_key"),
    "missing key": (lambda t: t.pop(B3), "adapter_missing_key"),
    "nan": (_nan, "adapter_non_finite"),
    "inf": (_inf, "adapter_non_finite"),
    "half precision": (lambda t: _set(t, A1, t[A1].half()), "adapter_dtype"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_bad_tensors(post_adapter, client, base_model_id, peft_pair, nothing_left, case):
    change, code = TENSOR_CASES[case]
    files = [(CONFIG, peft_pair.files()[CONFIG]), (WEIGHTS, _mutate_tensors(peft_pair, change))]
    message = _expect(post_adapter(client, base_model_id, files), 422, code, nothing_left)
    assert base_model_id in message


CONFIG_CASES = {
    "wrong peft_type": lambda d: d.update(peft_type="PREFIX_TUNING"),
    "rank differs from tensors": lambda d: d.update(r=8),
    "unknown target module": lambda d: d.update(target_modules=["linear9"]),
    "dora": lambda d: d.update(use_dora=True),
    "json list": lambda d: [d],
    "negative alpha": lambda d: d.update(lora_alpha=-1),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config(post_adapter, client, base_model_id, peft_pair, nothing_left, case):
    config = _mutate_config(peft_pair, CONFIG_CASES[case])
    files = [(CONFIG, config), (WEIGHTS, peft_pair.files()[WEIGHTS])]
    code = "adapter_shape_mismatch" if case == "rank differs from tensors" else None
    response = post_adapter(client, base_model_id, files)
    _expect(response, 422, code or "invalid_adapter_config", nothing_left)


@pytest.mark.parametrize(
    "config, weights, code",
    [
        (b"{not json", None, "invalid_adapter_config"),
        (b"\xff\xfe", None, "invalid_adapter_config"),
        (None, b"not a safetensors file at all", "invalid_adapter_file"),
        (None, struct.pack("<Q", 1 << 40) + b"{}", "invalid_adapter_file"),
        (None, b"", "invalid_adapter_file"),
    ],
)
def test_unparseable_files(
    post_adapter, client, base_model_id, peft_pair, nothing_left, config, weights, code
):
    good = peft_pair.files()
    files = [
        (CONFIG, config or good[CONFIG]),
        (WEIGHTS, weights if weights is not None else good[WEIGHTS]),
    ]
    _expect(post_adapter(client, base_model_id, files), 422, code, nothing_left)


# ------------------------------------------------------------------ zips and sizes


@pytest.mark.parametrize(
    "member, code",
    [
        ("../adapter_config.json", "invalid_zip"),
        ("/etc/adapter_config.json", "invalid_zip"),
        ("..\\adapter_config.json", "invalid_zip"),
        ("C:/adapter_config.json", "invalid_zip"),
        ("sub/adapter_config.json", "unexpected_file"),
        ("README.md", "unexpected_file"),
    ],
)
def test_zip_with_bad_member_names(
    post_adapter, client, base_model_id, peft_pair, zip_bytes, nothing_left, member, code
):
    good = peft_pair.files()
    archive = zip_bytes([(member, good[CONFIG]), *good.items()])
    message = _expect(
        post_adapter(client, base_model_id, [("a.zip", archive)]), 422, code, nothing_left
    )
    if code == "invalid_zip":
        assert "traversal" in message


def test_zip_with_duplicate_member(
    post_adapter, client, base_model_id, peft_pair, zip_bytes, nothing_left
):
    good = peft_pair.files()
    archive = zip_bytes([*good.items(), (WEIGHTS, good[WEIGHTS])])
    _expect(
        post_adapter(client, base_model_id, [("a.zip", archive)]), 422, "invalid_zip", nothing_left
    )


def test_zip_missing_weights(
    post_adapter, client, base_model_id, peft_pair, zip_bytes, nothing_left
):
    archive = zip_bytes([(CONFIG, peft_pair.files()[CONFIG])])
    response = post_adapter(client, base_model_id, [("a.zip", archive)])
    _expect(response, 422, "adapter_missing_file", nothing_left)


def test_not_a_zip(post_adapter, client, base_model_id, nothing_left):
    response = post_adapter(client, base_model_id, [("a.zip", b"PK\x03\x04 truncated")])
    _expect(response, 422, "invalid_zip", nothing_left)


def test_zip_bomb_ratio_is_refused(
    post_adapter, client, base_model_id, peft_pair, zip_bytes, nothing_left
):
    bomb = zip_bytes([(CONFIG, peft_pair.files()[CONFIG]), (WEIGHTS, bytes(16 * 1024 * 1024))])
    assert len(bomb) < 100_000
    message = _expect(
        post_adapter(client, base_model_id, [("a.zip", bomb)]), 422, "invalid_zip", nothing_left
    )
    assert "zip bomb" in message


def _patch_u32(archive: bytes, signature: bytes, offset: int, value: int) -> bytes:
    """Overwrite a 4-byte field of every header with ``signature`` in a zip."""
    data = bytearray(archive)
    start = data.find(signature)
    while start != -1:
        data[start + offset : start + offset + 4] = struct.pack("<I", value)
        start = data.find(signature, start + 4)
    return bytes(data)


def test_zip_lying_about_sizes_is_refused(
    post_adapter, client, base_model_id, peft_pair, zip_bytes, nothing_left
):
    """Declared sizes are not trusted: a member larger than declared fails its check."""
    archive = zip_bytes(
        [(WEIGHTS, peft_pair.files()[WEIGHTS]), (CONFIG, peft_pair.files()[CONFIG])]
    )
    # uncompressed size: offset 22 in local headers, 24 in central directory entries
    archive = _patch_u32(archive, b"PK\x03\x04", 22, 100)
    archive = _patch_u32(archive, b"PK\x01\x02", 24, 100)
    _expect(
        post_adapter(client, base_model_id, [("a.zip", archive)]), 422, "invalid_zip", nothing_left
    )


def test_encrypted_zip_member_is_refused(
    post_adapter, client, base_model_id, peft_pair, zip_bytes, nothing_left
):
    archive = bytearray(zip_bytes(list(peft_pair.files().items())))
    start = archive.find(b"PK\x01\x02")
    archive[start + 8] |= 0x1  # general purpose flag bit 0: encrypted
    response = post_adapter(client, base_model_id, [("a.zip", bytes(archive))])
    assert "encrypted" in _expect(response, 422, "invalid_zip", nothing_left)


def test_oversized_adapter_is_413(
    make_app, post_adapter, base_model_id, peft_pair, zip_bytes, nothing_left
):
    small = 64 * 1024  # the peft adapter's weights are ~109 KiB
    assert len(peft_pair.files()[WEIGHTS]) > small
    with TestClient(make_app(max_adapter_bytes=small)) as client:
        loose = post_adapter(client, base_model_id, list(peft_pair.files().items()))
        _expect(loose, 413, "adapter_too_large", nothing_left)
        archive = zip_bytes(list(peft_pair.files().items()))
        zipped = post_adapter(client, base_model_id, [("a.zip", archive)])
        _expect(zipped, 413, "adapter_too_large", nothing_left)


def test_failed_registration_leaves_no_directory(
    app, post_adapter, base_model_id, peft_pair, nothing_left, monkeypatch
):
    import service.adapters.upload as upload

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(upload, "register_adapter", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = post_adapter(client, base_model_id, list(peft_pair.files().items()))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    nothing_left()
