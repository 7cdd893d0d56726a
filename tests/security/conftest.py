"""Fixtures for the security tests: apps with chosen limits/keys, a real uvicorn server,
a registered base model and peft-written adapters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.live_server import LiveServer  # noqa: F401 (re-exported for the tests)


@pytest.fixture
def make_app(migrated) -> Callable[..., Any]:
    """Build the real app on the migrated database with settings overrides."""
    from service.api.app import create_app

    def make(**overrides: Any) -> Any:  # validated, so e.g. api_keys become SecretStr
        return create_app(type(migrated).model_validate({**migrated.model_dump(), **overrides}))

    return make


@pytest.fixture
def live_server() -> type[LiveServer]:
    """``live_server(app)`` -> a context manager running ``app`` over real HTTP."""
    return LiveServer


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temp dir that ``tempfile`` (and so Starlette's spooled uploads) uses."""
    import tempfile

    d = tmp_path / "spool"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


# ---------------------------------------------------------------- base model and adapters

BASE_CLASSES = (0, 1, 2, 3, 4)
BASE_MODEL_ID = "model_base_for_import"


class PeftPair:
    """A base MLP saved with ``save_model`` and an adapter for it saved by peft itself."""

    def __init__(self, root: Path) -> None:
        import copy

        import peft
        import torch

        from models.checkpoint import save_model
        from models.classifier import MLP, MLPConfig

        torch.manual_seed(0)
        self.base = MLP(MLPConfig()).eval()
        self.base_dir = root / "base"
        save_model(self.base_dir, self.base, classes=BASE_CLASSES)
        config = peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["linear1", "linear2", "linear3"]
        )
        self.peft_model = peft.get_peft_model(copy.deepcopy(self.base), config).eval()
        with torch.no_grad():
            for name, param in self.peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.05)  # a fresh B is zeros: make the adapter matter
        self.adapter_dir = root / "adapter"
        self.peft_model.save_pretrained(str(self.adapter_dir))

    def files(self) -> dict[str, bytes]:
        """The two PEFT files (peft also writes a README.md, which is not uploaded)."""
        names = ("adapter_config.json", "adapter_model.safetensors")
        return {n: (self.adapter_dir / n).read_bytes() for n in names}


@pytest.fixture(scope="session")
def peft_pair(tmp_path_factory: pytest.TempPathFactory) -> PeftPair:
    """One peft-written adapter and its base model for the whole session."""
    return PeftPair(tmp_path_factory.mktemp("peft"))


@pytest.fixture
def base_model_id(migrated, peft_pair: PeftPair) -> str:
    """Register ``peft_pair``'s base network as a pretrained model; returns its id."""
    import shutil

    from models.classifier import count_parameters
    from service.core.artifacts import model_dir
    from service.db.engine import session_scope
    from service.db.model_records import register_model

    target = model_dir(migrated, BASE_MODEL_ID)
    shutil.copytree(peft_pair.base_dir, target)
    with session_scope(migrated.database_url) as session:
        register_model(
            session,
            model_id=BASE_MODEL_ID,
            kind="pretrain",
            job_id=None,
            parent_id=None,
            classes=list(BASE_CLASSES),
            architecture=peft_pair.base.config.to_dict(),
            n_parameters=count_parameters(peft_pair.base),
            test_accuracy=None,
            path=str(target),
        )
    return BASE_MODEL_ID


def make_zip(members: list[tuple[str, bytes]], compression: int | None = None) -> bytes:
    """A zip (deflated by default) holding ``members`` in order, duplicates allowed."""
    import io
    import warnings
    import zipfile

    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compression is None else compression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(buffer, "w", compression=method) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def zip_bytes() -> Callable[..., bytes]:
    """``zip_bytes([(name, data), ...], compression=None)`` -> the zip's bytes."""
    return make_zip


@pytest.fixture
def nothing_left(migrated) -> Callable[[], None]:
    """Assert that no adapter directory (temporary or final) and no adapter record exist."""
    from sqlalchemy import func, select

    from service.db.engine import session_scope
    from service.db.tables import AdapterRecord

    def check() -> None:
        adapters = migrated.artifact_dir / "adapters"
        leftovers = list(adapters.iterdir()) if adapters.exists() else []
        assert leftovers == [], leftovers
        with session_scope(migrated.database_url) as session:
            assert session.scalar(select(func.count()).select_from(AdapterRecord)) == 0

    return check


def _post_adapter(client: Any, base_model_id: str, files: list[tuple[str, bytes]], **form: str):
    """POST ``files`` (``[(filename, bytes)]``) and form fields to ``/adapters``."""
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/adapters", data={"base_model_id": base_model_id, **form}, files=parts)


@pytest.fixture
def post_adapter() -> Callable[..., Any]:
    """``post_adapter(client, base_model_id, [(filename, bytes)], **form)`` -> response."""
    return _post_adapter
