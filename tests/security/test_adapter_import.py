"""``POST /adapters``: importing an adapter that peft itself wrote, as files and as a zip."""

from __future__ import annotations

from pathlib import Path

import torch

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _check_created(response, base_model_id: str, classes: list[int]) -> dict:
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/adapters/{body['id']}"
    assert body["base_model_id"] == base_model_id
    assert body["source"] == "imported"
    assert body["job_id"] is None and body["test_accuracy"] is None
    assert (body["r"], body["lora_alpha"], body["use_rslora"]) == (4, 8.0, False)
    assert sorted(body["target_modules"]) == ["linear1", "linear2", "linear3"]
    assert body["trainable_parameters"] == 4 * (784 + 1000 + 2000) + 4 * (1000 + 2000 + 5)
    assert body["classes"] == classes
    return body


def _stored_dir(settings, adapter_id: str) -> Path:
    from service.db.adapter_records import get_adapter
    from service.db.engine import session_scope

    with session_scope(settings.database_url) as session:
        record = get_adapter(session, adapter_id)
        assert record is not None
        return Path(record.path)


def test_import_peft_files(post_adapter, client, migrated, base_model_id, peft_pair):
    files = list(peft_pair.files().items())
    response = post_adapter(client, base_model_id, files)
    body = _check_created(response, base_model_id, [0, 1, 2, 3, 4])
    stored = _stored_dir(migrated, body["id"])
    assert stored.parent == (migrated.artifact_dir / "adapters").resolve()
    assert sorted(p.name for p in stored.iterdir()) == sorted(ADAPTER_FILES)
    assert [p.name for p in stored.parent.iterdir()] == [body["id"]]  # no temp dir left
    fetched = client.get(response.headers["location"])
    assert fetched.status_code == 200 and fetched.json() == body


def test_import_peft_zip_with_classes(
    post_adapter, client, migrated, base_model_id, peft_pair, zip_bytes
):
    archive = zip_bytes(list(peft_pair.files().items()))
    response = post_adapter(
        client, base_model_id, [("my-adapter.zip", archive)], classes="5,6,7,8,9"
    )
    body = _check_created(response, base_model_id, [5, 6, 7, 8, 9])
    stored = _stored_dir(migrated, body["id"])
    for name, data in peft_pair.files().items():
        assert (stored / name).read_bytes() == data


def test_stored_zip_stored_uncompressed_is_accepted(
    post_adapter, client, base_model_id, peft_pair, zip_bytes
):
    import zipfile

    archive = zip_bytes(list(peft_pair.files().items()), compression=zipfile.ZIP_STORED)
    assert post_adapter(client, base_model_id, [("a.zip", archive)]).status_code == 201


def test_exported_archive_imports_again(post_adapter, client, base_model_id, peft_pair):
    """``GET /adapters/{id}/archive`` output is a valid ``POST /adapters`` zip."""
    first = post_adapter(client, base_model_id, list(peft_pair.files().items()))
    assert first.status_code == 201, first.text
    archive = client.get(f"{first.headers['location']}/archive")
    assert archive.status_code == 200
    second = post_adapter(client, base_model_id, [("exported.zip", archive.content)])
    body = _check_created(second, base_model_id, [0, 1, 2, 3, 4])
    assert body["id"] != first.json()["id"]


def test_imported_adapter_round_trips_to_peft_logits(
    post_adapter, client, migrated, base_model_id, peft_pair
):
    """The stored artifact loads with our loader and gives exactly peft's logits."""
    from models.adapter_io import load_adapter
    from models.checkpoint import load_model
    from models.multi_lora import forward_with_adapters

    body = _check_created(
        post_adapter(client, base_model_id, list(peft_pair.files().items())),
        base_model_id,
        [0, 1, 2, 3, 4],
    )
    base, meta = load_model(migrated.artifact_dir / "models" / base_model_id)
    adapter = load_adapter(_stored_dir(migrated, body["id"]), meta.config)
    x = torch.randn(8, 784, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = forward_with_adapters(base.eval(), x, [adapter] * 4 + [None] * 4)
        theirs = peft_pair.peft_model(x)
        plain = peft_pair.base(x)
    torch.testing.assert_close(ours[:4], theirs[:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[4:], plain[4:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(theirs, plain, atol=1e-3)  # the adapter does change the answer


def test_imported_adapter_serves_on_predict(post_adapter, client, base_model_id, peft_pair):
    """An imported adapter answers /predict like a trained one: peft's probabilities."""
    from models.data import normalize_images

    body = _check_created(
        post_adapter(client, base_model_id, list(peft_pair.files().items()), classes="5,6,7,8,9"),
        base_model_id,
        [5, 6, 7, 8, 9],
    )
    image = torch.zeros(28, 28, dtype=torch.uint8)  # dark border: taken as already framed
    image[4:24, 4:24] = torch.randint(0, 256, (20, 20), generator=torch.Generator().manual_seed(3))
    x = normalize_images(image[None])
    for adapter_id, network, classes in (
        (body["id"], peft_pair.peft_model, [5, 6, 7, 8, 9]),
        (None, peft_pair.base, [0, 1, 2, 3, 4]),
    ):
        with torch.no_grad():
            expected = torch.softmax(network(x), dim=1)[0]
        request = {"pixels": image.tolist(), "model_id": base_model_id, "adapter_id": adapter_id}
        response = client.post("/predict", json=request)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["adapter_id"] == adapter_id
        assert answer["digit"] == classes[int(expected.argmax())]
        got = torch.tensor([answer["probabilities"][str(d)] for d in classes])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
