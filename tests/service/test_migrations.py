"""Alembic revisions: one head, and a round-one database (revision 0001, rows as round-one
code wrote them, see ``round_one_db``) that upgrades to head and is then served by today's code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from round_one_db import (
    BASE_CLASSES,
    LATE_FULL_CONFIG,
    NEW_CLASSES,
    PIXELS,
    ROUND_ONE,
    ROUND_ONE_KEY,  # noqa: F401
    T0,
    _jobs,
    _models,
    _write_round_one,
)


def test_alembic_has_exactly_one_head(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from service.db.migrations import alembic_config

    script = ScriptDirectory.from_config(alembic_config(f"sqlite:///{tmp_path / 'x.db'}"))
    heads = script.get_heads()
    assert len(heads) == 1, f"Alembic revisions branch: heads {heads}; add a merge revision"
    revisions = {rev.revision for rev in script.walk_revisions()}
    assert {"0001", "0002"} <= revisions


def test_0002_renames_model_kinds_and_downgrades(tmp_path: Path) -> None:
    """0002 alone: old kinds renamed on upgrade, restored on downgrade, others untouched."""
    from alembic import command

    from service.db.engine import get_engine
    from service.db.migrations import alembic_config, upgrade

    url = f"sqlite:///{tmp_path / 'kinds.db'}"
    upgrade(url, ROUND_ONE)
    rows = [("m1", "pretrained"), ("m2", "finetuned_full"), ("m3", "pretrain")]
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(
            _models.insert(),
            [
                {"id": i, "kind": k, "job_id": None, "parent_id": None, "classes": [0, 1],
                 "architecture": {}, "n_parameters": 1, "test_accuracy": None, "path": "/x",
                 "created_at": T0}
                for i, k in rows
            ],
        )  # fmt: skip

    def kinds() -> dict[str, str]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT id, kind FROM models")).all())

    upgrade(url, "0002")
    assert kinds() == {"m1": "pretrain", "m2": "finetune_full", "m3": "pretrain"}
    command.downgrade(alembic_config(url), ROUND_ONE)
    assert kinds() == {"m1": "pretrained", "m2": "finetuned_full", "m3": "pretrained"}
    engine.dispose()


def test_round_one_database_upgrades_and_is_served(
    fresh_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.core.job_spec import parse_stored
    from service.db.engine import get_engine
    from service.db.migrations import upgrade

    artifact_dir = tmp_path / "artifacts"
    upgrade(fresh_url, ROUND_ONE)
    ids = _write_round_one(fresh_url, artifact_dir)

    upgrade(fresh_url)

    engine = get_engine(fresh_url)
    with engine.connect() as conn:
        kinds = dict(conn.execute(sa.select(_models.c.id, _models.c.kind)).all())
        jobs = {
            row.id: parse_stored(row.kind, row.config)
            for row in conn.execute(sa.select(_jobs.c.id, _jobs.c.kind, _jobs.c.config))
        }
    assert kinds == {ids["base"]: "pretrain", ids["full"]: "finetune_full"}

    early_pretrain = jobs[ids["pretrain_job"]]
    assert early_pretrain.lr_schedule == "constant"
    assert early_pretrain.classes == BASE_CLASSES
    assert early_pretrain.mlp_config().hidden1 == 32
    early_lora = jobs[ids["lora_job"]]
    assert early_lora.lr_schedule == "constant"
    assert early_lora.dropout is None  # keep the base's dropout, as round one did
    assert early_lora.classes == NEW_CLASSES
    assert early_lora.train_config().lr_schedule == "constant"
    assert early_lora.lora_config().r == 2
    late_full = jobs[ids["full_job"]]
    assert late_full.lr_schedule == "cosine"
    assert late_full.dropout == 0.0
    assert late_full.classes == NEW_CLASSES

    # ------------------------------------------------------------- served by today's app
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.core.settings import Settings, get_settings

    env = {
        "DATABASE_URL": fresh_url,
        "BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "ARTIFACT_DIR": str(artifact_dir),
        "DATA_DIR": os.environ.get("DATA_DIR", str(tmp_path / "data")),
        "MNIST_DOWNLOAD": "false",
        "API_KEYS": "",
        "AUTO_MIGRATE": "false",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        with TestClient(create_app(Settings())) as client:
            resp = client.get(f"/jobs/{ids['lora_job']}")
            assert resp.status_code == 200, resp.text
            config = resp.json()["config"]
            assert config["classes"] == NEW_CLASSES, config
            assert config["lr_schedule"] == "constant", config
            assert config["dropout"] is None, config

            resp = client.get("/models", params={"kind": "pretrained"})  # old name accepted
            assert resp.status_code == 200, resp.text
            items = resp.json()["items"]
            assert [(m["id"], m["kind"]) for m in items] == [(ids["base"], "pretrain")]

            resp = client.get("/models", params={"kind": "finetune_full"})
            assert resp.status_code == 200, resp.text
            items = resp.json()["items"]
            assert [(m["id"], m["kind"]) for m in items] == [(ids["full"], "finetune_full")]

            new_keys = {str(d) for d in NEW_CLASSES}
            for adapter_id in (ids["imported"], ids["trained"]):
                resp = client.post("/predict", json={"pixels": PIXELS, "adapter_id": adapter_id})
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert body["adapter_id"] == adapter_id
                assert set(body["probabilities"]) == new_keys, body
                assert body["digit"] in NEW_CLASSES

            # A round-one client retrying the late job's request with its key: a replay
            # (its stored hash was taken under the old field name `digits`).
            retry = {"kind": "finetune_full", "base_model_id": ids["base"],
                     "config": LATE_FULL_CONFIG}  # fmt: skip
            resp = client.post("/jobs", json=retry, headers={"Idempotency-Key": ROUND_ONE_KEY})
            assert resp.status_code == 200, resp.text
            assert resp.json()["id"] == ids["full_job"]
            assert resp.headers["idempotent-replayed"] == "true"
            other = {**retry, "config": {**LATE_FULL_CONFIG, "epochs": 11}}
            resp = client.post("/jobs", json=other, headers={"Idempotency-Key": ROUND_ONE_KEY})
            assert resp.status_code == 409, resp.text

            resp = client.post("/predict", json={"pixels": PIXELS, "model_id": ids["base"]})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["model_id"] == ids["base"] and body["adapter_id"] is None
            assert set(body["probabilities"]) == {str(d) for d in BASE_CLASSES}, body
    finally:
        get_settings.cache_clear()
        engine.dispose()
