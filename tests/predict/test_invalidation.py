"""Serving forgets deleted adapters through one path (service.serving.invalidation): a
deletion committed in this process at once, a rolled-back one never, another database's
never; predictors left unclosed are not kept alive by it."""

from __future__ import annotations

import asyncio
import gc
import weakref

from service.db import adapter_records
from service.db.engine import session_factory
from service.serving import invalidation
from service.serving.images import to_model_input
from service.serving.predictor import Predictor
from tests.predict.conftest import sample_pixels


def _load(predictor: Predictor, adapter_id: str) -> None:
    x = to_model_input(sample_pixels(1).numpy())
    asyncio.run(predictor.predict(x, "base", adapter_id))


def test_committed_delete_is_forgotten_at_once_rolled_back_is_not(registered, migrated):
    predictor = Predictor(migrated)
    try:
        _load(predictor, "ad1")
        _load(predictor, "ad2")
        factory = session_factory(migrated.database_url)
        with factory() as session:
            adapter_records.delete_adapter(session, "ad1")
            session.rollback()
        assert "ad1" in predictor.executor.adapters.keys()  # nothing was deleted
        with factory() as session:
            adapter_records.delete_adapter(session, "ad2")
            assert "ad2" in predictor.executor.adapters.keys()  # flushed, not committed
            session.commit()
        assert "ad2" not in predictor.executor.adapters.keys()
        assert "ad1" in predictor.executor.adapters.keys()
    finally:
        asyncio.run(predictor.aclose())


def test_another_databases_delete_is_not_forgotten(registered, migrated, tmp_path):
    from service.db.migrations import upgrade
    from tests.predict.conftest import insert_adapter, insert_model

    other = migrated.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'b.db'}"})
    upgrade(other.database_url)
    insert_model(other, registered, "base")
    insert_adapter(other, registered, "ad3")
    predictor = Predictor(migrated)
    try:
        _load(predictor, "ad3")
        with session_factory(other.database_url)() as session:
            adapter_records.delete_adapter(session, "ad3")
            session.commit()
        assert "ad3" in predictor.executor.adapters.keys()  # same id, other database
    finally:
        asyncio.run(predictor.aclose())


def test_unclosed_predictors_are_not_kept_alive(migrated):
    predictor = Predictor(migrated)
    ref = weakref.ref(predictor.executor)
    predictor._thread.shutdown(wait=True)
    del predictor
    gc.collect()
    assert ref() is None and all(e is not None for e in invalidation._live)
