"""Alembic revisions: one head, and a round-one database (revision 0001, rows as round-one
code wrote them) that upgrades to head and is then served by today's code.

The round-one rows are inserted with plain ``sa.table`` inserts against the 0001 schema, not
through today's ORM classes, so the test keeps describing what round one stored however the
tables change later. Artifacts are real (small) safetensors files, so ``/predict`` loads them.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from svc_helpers import PG_ADMIN_URL

ROUND_ONE = "0001"
BASE_CLASSES = [0, 1, 2, 3, 4]
NEW_CLASSES = [5, 6, 7, 8, 9]
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PIXELS = [[0] * 28 for _ in range(28)]

# --------------------------------------------------------------------- the 0001 schema

_jobs = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("kind", sa.String),
    sa.column("status", sa.String),
    sa.column("config", sa.JSON),
    sa.column("base_model_id", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("finished_at", sa.DateTime(timezone=True)),
    sa.column("epoch", sa.Integer),
    sa.column("epochs", sa.Integer),
    sa.column("attempt", sa.Integer),
    sa.column("worker_id", sa.String),
    sa.column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.column("cancel_requested", sa.Boolean),
    sa.column("error_code", sa.String),
    sa.column("error_message", sa.Text),
    sa.column("result_model_id", sa.String),
    sa.column("result_adapter_id", sa.String),
    sa.column("test_accuracy", sa.Float),
    sa.column("test_metrics", sa.JSON),
    sa.column("idempotency_key", sa.String),
    sa.column("request_hash", sa.String),
)
_metrics = sa.table(
    "metrics",
    sa.column("job_id", sa.String),
    sa.column("epoch", sa.Integer),
    sa.column("name", sa.String),
    sa.column("value", sa.Float),
)
_models = sa.table(
    "models",
    sa.column("id", sa.String),
    sa.column("kind", sa.String),
    sa.column("job_id", sa.String),
    sa.column("parent_id", sa.String),
    sa.column("classes", sa.JSON),
    sa.column("architecture", sa.JSON),
    sa.column("n_parameters", sa.Integer),
    sa.column("test_accuracy", sa.Float),
    sa.column("path", sa.Text),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_adapters = sa.table(
    "adapters",
    sa.column("id", sa.String),
    sa.column("base_model_id", sa.String),
    sa.column("job_id", sa.String),
    sa.column("source", sa.String),
    sa.column("r", sa.Integer),
    sa.column("lora_alpha", sa.Float),
    sa.column("use_rslora", sa.Boolean),
    sa.column("lora_dropout", sa.Float),
    sa.column("target_modules", sa.JSON),
    sa.column("trainable_parameters", sa.Integer),
    sa.column("classes", sa.JSON),
    sa.column("test_accuracy", sa.Float),
    sa.column("path", sa.Text),
    sa.column("created_at", sa.DateTime(timezone=True)),
)

# ------------------------------------------------------------- round-one job configs

# Early round one: no lr_schedule (every run was constant), no fine-tuning dropout (the
# base's own was kept), and the classes were called ``digits``.
EARLY_PRETRAIN_CONFIG = {
    "digits": BASE_CLASSES,
    "epochs": 3,
    "lr": 0.001,
    "weight_decay": 0.0001,
    "batch_size": 128,
    "seed": 0,
    "val_fraction": 0.3,
    "max_train_samples": None,
    "hidden1": 32,
    "hidden2": 48,
    "dropout": 0.5,
}
EARLY_LORA_CONFIG = {
    "digits": NEW_CLASSES,
    "epochs": 10,
    "lr": 0.001,
    "weight_decay": 0.0,
    "batch_size": 128,
    "seed": 0,
    "val_fraction": 0.3,
    "max_train_samples": None,
    "r": 2,
    "lora_alpha": 4.0,
    "target_modules": ["linear1", "linear2", "linear3"],
    "lora_dropout": 0.0,
    "use_rslora": False,
}
# Late round one: every field, still under the old name ``digits``.
LATE_FULL_CONFIG = {
    "digits": NEW_CLASSES,
    "epochs": 10,
    "lr": 1e-05,
    "weight_decay": 0.0001,
    "batch_size": 128,
    "lr_schedule": "cosine",
    "seed": 0,
    "val_fraction": 0.3,
    "max_train_samples": None,
    "dropout": 0.0,
}


def _hex() -> str:
    return secrets.token_hex(12)


# ------------------------------------------------------------------------- databases


def _postgres_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database (no schema): a SQLite file, or a new Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'round_one.db'}"
        return
    if not _postgres_up():
        pytest.skip("Postgres is not running on 127.0.0.1:5432")
    import psycopg

    from service.db.engine import get_engine

    name = f"lora_mig_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------- artifacts


def _save_mlp(directory: Path, classes: list[int], seed: int, job_id: str, parent: str | None):
    """A small MLP (784-32-48-5) saved as round one did; returns its config and size."""
    import torch

    from models.checkpoint import save_model
    from models.classifier import MLP, MLPConfig, count_parameters

    torch.manual_seed(seed)
    model = MLP(MLPConfig(hidden1=32, hidden2=48, n_classes=5))
    save_model(directory, model, classes, parent_id=parent, extra={"job_id": job_id})
    return model.config, count_parameters(model)


def _save_adapter(directory: Path, base_config, base_id: str, seed: int) -> int:  # noqa: ANN001
    """A random r=2 adapter on all three linears; returns its trainable parameter count."""
    import torch

    from models import AdapterWeights  # exported by the package wherever it lives
    from models.adapter_io import save_adapter
    from models.classifier import LINEAR_NAMES, linear_shapes
    from models.lora import LoraConfig

    gen = torch.Generator().manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=4.0)
    shapes = linear_shapes(base_config)
    A = {m: torch.randn(config.r, shapes[m][0], generator=gen) * 0.1 for m in LINEAR_NAMES}
    B = {m: torch.randn(shapes[m][1], config.r, generator=gen) * 0.1 for m in LINEAR_NAMES}
    adapter = AdapterWeights(config=config, A=A, B=B)
    save_adapter(directory, adapter, base_model_name_or_path=base_id)
    return sum(config.r * (fan_in + fan_out) for fan_in, fan_out in shapes.values())


# ---------------------------------------------------------------------- round-one rows


def _job_row(job_id: str, kind: str, config: dict[str, Any], at: datetime, **kw: Any) -> dict:
    """A succeeded job row with every non-null 0001 column, as round one finished it."""
    row = {
        "id": job_id,
        "kind": kind,
        "status": "succeeded",
        "config": config,
        "base_model_id": None,
        "created_at": at,
        "started_at": at + timedelta(seconds=1),
        "finished_at": at + timedelta(seconds=30),
        "epoch": config["epochs"],
        "epochs": config["epochs"],
        "attempt": 1,
        "worker_id": "celery@round-one:1234",
        "heartbeat_at": at + timedelta(seconds=29),
        "cancel_requested": False,
        "error_code": None,
        "error_message": None,
        "result_model_id": None,
        "result_adapter_id": None,
        "test_accuracy": 0.9,
        "test_metrics": {"accuracy": 0.9, "loss": 0.3, "per_digit_errors": {}},
        "idempotency_key": None,
        "request_hash": None,
    }
    row.update(kw)
    return row


def _write_round_one(url: str, artifact_dir: Path) -> dict[str, str]:
    """Artifacts under ``artifact_dir`` and rows in the 0001 schema; returns the ids."""
    from service.db.engine import get_engine

    ids = {
        "pretrain_job": f"job_{_hex()}",
        "full_job": f"job_{_hex()}",
        "lora_job": f"job_{_hex()}",
    }
    ids["base"] = "mdl_" + ids["pretrain_job"].removeprefix("job_")
    ids["full"] = "mdl_" + ids["full_job"].removeprefix("job_")
    ids["trained"] = "adp_" + ids["lora_job"].removeprefix("job_")
    ids["imported"] = f"adapter_{_hex()}"  # round one's id of an uploaded adapter

    base_dir = (artifact_dir / "models" / ids["base"]).resolve()
    full_dir = (artifact_dir / "models" / ids["full"]).resolve()
    trained_dir = (artifact_dir / "adapters" / ids["trained"]).resolve()
    imported_dir = (artifact_dir / "adapters" / ids["imported"]).resolve()
    arch, n_params = _save_mlp(base_dir, BASE_CLASSES, 0, ids["pretrain_job"], None)
    _save_mlp(full_dir, NEW_CLASSES, 1, ids["full_job"], ids["base"])
    n_trainable = _save_adapter(trained_dir, arch, ids["base"], 2)
    _save_adapter(imported_dir, arch, ids["base"], 3)

    def model(model_id: str, kind: str, job: str, parent: str | None, classes, path, at):  # noqa: ANN001
        return {
            "id": model_id,
            "kind": kind,
            "job_id": job,
            "parent_id": parent,
            "classes": classes,
            "architecture": arch.to_dict(),
            "n_parameters": n_params,
            "test_accuracy": 0.95,
            "path": str(path),
            "created_at": at,
        }

    def adapter(adapter_id: str, source: str, job: str | None, path: Path, at: datetime):
        return {
            "id": adapter_id,
            "base_model_id": ids["base"],
            "job_id": job,
            "source": source,
            "r": 2,
            "lora_alpha": 4.0,
            "use_rslora": False,
            "lora_dropout": 0.0,
            "target_modules": ["linear1", "linear2", "linear3"],
            "trainable_parameters": n_trainable,
            "classes": NEW_CLASSES,
            "test_accuracy": 0.9 if source == "trained" else None,
            "path": str(path),
            "created_at": at,
        }

    t = [T0 + timedelta(minutes=10 * i) for i in range(6)]
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(
            _models.insert(),
            [
                model(ids["base"], "pretrained", ids["pretrain_job"], None, BASE_CLASSES,
                      base_dir, t[1]),
                model(ids["full"], "finetuned_full", ids["full_job"], ids["base"], NEW_CLASSES,
                      full_dir, t[5]),
            ],
        )  # fmt: skip
        conn.execute(
            _jobs.insert(),
            [
                _job_row(ids["pretrain_job"], "pretrain", EARLY_PRETRAIN_CONFIG, t[0],
                         result_model_id=ids["base"]),
                _job_row(ids["lora_job"], "finetune_lora", EARLY_LORA_CONFIG, t[2],
                         base_model_id=ids["base"], result_adapter_id=ids["trained"]),
                _job_row(ids["full_job"], "finetune_full", LATE_FULL_CONFIG, t[4],
                         base_model_id=ids["base"], result_model_id=ids["full"]),
            ],
        )  # fmt: skip
        conn.execute(
            _metrics.insert(),
            [
                {"job_id": ids["lora_job"], "epoch": e, "name": name, "value": v}
                for e in (1, 2)
                for name, v in (("train_loss", 1.0 / e), ("val_accuracy", 0.5 + 0.1 * e))
            ],
        )
        conn.execute(
            _adapters.insert(),
            [
                adapter(ids["trained"], "trained", ids["lora_job"], trained_dir, t[3]),
                adapter(ids["imported"], "imported", None, imported_dir, t[4]),
            ],
        )
    return ids


# ----------------------------------------------------------------------------- tests


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

            resp = client.post("/predict", json={"pixels": PIXELS, "model_id": ids["base"]})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["model_id"] == ids["base"] and body["adapter_id"] is None
            assert set(body["probabilities"]) == {str(d) for d in BASE_CLASSES}, body
    finally:
        get_settings.cache_clear()
        engine.dispose()
