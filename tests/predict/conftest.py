"""Fixtures for the /predict tests: small real artifacts written with models/, their records
in the migrated database, apps with chosen serving settings, and a real uvicorn server.

Artifacts (built once per session, in a temp dir):

- ``base``: MLP 784-64-32-5, classes 0..4 (random init; these tests check serving, not
  accuracy); ``other``: a second base model, same shape, classes 0..4.
- ``ad0``..``ad7``: adapters of ``base`` (r = 4, all three layers, classes 5..9), each with
  random A and B large enough that each one answers very differently from the base and from
  the others; ``ad_other``: an adapter of ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from models.adapter_io import save_adapter
from models.checkpoint import save_model
from models.classifier import MLP, MLPConfig
from models.lora import AdapterWeights, LoraConfig
from tests.live_server import LiveServer  # noqa: F401 (re-exported for the tests)

SMALL = MLPConfig(in_features=784, hidden1=64, hidden2=32, n_classes=5, dropout=0.5)
BASE_CLASSES = (0, 1, 2, 3, 4)
ADAPTER_CLASSES = (5, 6, 7, 8, 9)
N_ADAPTERS = 8


def make_adapter_weights(config: MLPConfig, seed: int, r: int = 4) -> AdapterWeights:
    """An adapter with random A and B: a large, seed-specific change of every layer that
    still leaves the probabilities unsaturated (max ~0.4-0.6 on the sample images)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    shapes = {
        "linear1": (config.in_features, config.hidden1),
        "linear2": (config.hidden1, config.hidden2),
        "linear3": (config.hidden2, config.n_classes),
    }
    lora = LoraConfig(r=r, lora_alpha=2.0 * r, target_modules=tuple(shapes))
    A = {m: torch.randn(r, fin, generator=gen) / fin**0.5 for m, (fin, _) in shapes.items()}
    B = {m: torch.randn(fout, r, generator=gen) * 0.3 for m, (_, fout) in shapes.items()}
    return AdapterWeights(lora, A, B)


@dataclass
class Artifacts:
    """Paths and in-memory copies of the test artifacts."""

    root: Path
    models: dict[str, tuple[Path, MLP, tuple[int, ...]]] = field(default_factory=dict)
    adapters: dict[str, tuple[Path, AdapterWeights, str, tuple[int, ...]]] = field(
        default_factory=dict
    )  # id -> (path, weights, base model id, classes)

    def new_adapter(self, adapter_id: str, seed: int, base_id: str = "base") -> None:
        """Write one more adapter of ``base_id`` to disk (not registered)."""
        weights = make_adapter_weights(SMALL, seed)
        path = self.root / "adapters" / adapter_id
        save_adapter(path, weights, base_model_name_or_path=base_id)
        self.adapters[adapter_id] = (path, weights, base_id, ADAPTER_CLASSES)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """The session's model and adapter directories (see the module docstring)."""
    root = tmp_path_factory.mktemp("predict_artifacts")
    art = Artifacts(root)
    for seed, model_id in enumerate(("base", "other")):
        torch.manual_seed(seed)
        model = MLP(SMALL).eval()
        path = root / "models" / model_id
        save_model(path, model, BASE_CLASSES)
        art.models[model_id] = (path, model, BASE_CLASSES)
    for i in range(N_ADAPTERS):
        art.new_adapter(f"ad{i}", seed=i)
    art.new_adapter("ad_other", seed=99, base_id="other")
    return art


def insert_model(settings: Any, art: Artifacts, model_id: str, created_at: Any = None) -> None:
    """Register ``model_id`` of ``art`` as a pre-trained model record."""
    from service.db.engine import session_scope
    from service.db.tables import ModelRecord

    path, model, classes = art.models[model_id]
    extra = {"created_at": created_at} if created_at is not None else {}
    with session_scope(settings.database_url) as s:
        s.add(
            ModelRecord(
                id=model_id,
                kind="pretrain",
                classes=list(classes),
                architecture={"type": "mlp", **SMALL.to_dict()},
                n_parameters=sum(p.numel() for p in model.parameters()),
                path=str(path),
                **extra,
            )
        )


def insert_adapter(settings: Any, art: Artifacts, adapter_id: str) -> None:
    """Register adapter ``adapter_id`` of ``art``."""
    from service.db.engine import session_scope
    from service.db.tables import AdapterRecord

    path, weights, base_id, classes = art.adapters[adapter_id]
    with session_scope(settings.database_url) as s:
        s.add(
            AdapterRecord(
                id=adapter_id,
                base_model_id=base_id,
                r=weights.config.r,
                lora_alpha=weights.config.lora_alpha,
                target_modules=list(weights.config.target_modules),
                trainable_parameters=weights.nbytes // 4,
                classes=list(classes),
                path=str(path),
            )
        )


def delete_adapter(settings: Any, adapter_id: str) -> None:
    """Delete an adapter record (as ``DELETE /adapters/{id}`` does)."""
    from service.db.engine import session_scope
    from service.db.tables import AdapterRecord

    with session_scope(settings.database_url) as s:
        s.query(AdapterRecord).filter_by(id=adapter_id).delete()


@pytest.fixture
def registered(migrated, artifacts: Artifacts) -> Artifacts:
    """Both models and every session adapter registered in the test database."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    insert_model(migrated, artifacts, "other", created_at=now - timedelta(hours=1))
    insert_model(migrated, artifacts, "base", created_at=now)  # newest: the default
    for adapter_id in artifacts.adapters:
        insert_adapter(migrated, artifacts, adapter_id)
    return artifacts


@pytest.fixture
def make_app(migrated) -> Callable[..., Any]:
    """Build the real app on the migrated database with settings overrides."""
    from service.api.app import create_app

    def make(**overrides: Any) -> Any:
        return create_app(migrated.model_copy(update=overrides))

    return make


@pytest.fixture
def predict_client(registered, make_app) -> Iterator[Any]:
    """TestClient on an app with both models and all adapters registered."""
    from fastapi.testclient import TestClient

    with TestClient(make_app()) as c:
        yield c


def sample_pixels(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` MNIST-like uint8 (28, 28) images: a bright random blob on black."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    for i in range(n):
        blob = torch.randint(0, 256, (16, 16), generator=gen, dtype=torch.uint8)
        images[i, 6:22, 6:22] = blob
    return images
