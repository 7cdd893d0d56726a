"""A round-one database for the migration tests: revision 0001, rows as round-one code
wrote them, real (small) artifacts, and a ``fresh_url`` fixture (SQLite and Postgres).

The round-one rows are inserted with plain ``sa.table`` inserts against the 0001 schema, not
through today's ORM classes, so the test keeps describing what round one stored however the
tables change later. Artifacts are real (small) safetensors files, so ``/predict`` loads them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

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


ROUND_ONE_KEY = "round-one-retry"  # the late job was submitted with this Idempotency-Key


def round_one_hash(kind: str, base_model_id: str | None, config: dict[str, Any]) -> str:
    """``request_hash`` as round one computed it (its config dump, ``digits`` and all)."""
    canonical = json.dumps(
        {"kind": kind, "base_model_id": base_model_id, "config": config},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _hex() -> str:
    return secrets.token_hex(12)


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
                         base_model_id=ids["base"], result_model_id=ids["full"],
                         idempotency_key=ROUND_ONE_KEY,
                         request_hash=round_one_hash("finetune_full", ids["base"],
                                                     LATE_FULL_CONFIG)),
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
