"""Serving's record cache (``service.serving.records``): after the first batch, a batch
naming the same records reads only the record version (one statement); any committed change,
by this process or another one writing plain SQL, is seen by the next batch."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import torch
from sqlalchemy import event

from models.multi_lora import forward_with_adapters
from service.core.errors import ApiError
from service.serving.batch import BatchItem
from service.serving.executor import BatchExecutor
from service.serving.images import to_model_input
from service.serving.records import RecordCache
from tests.predict.conftest import insert_adapter, insert_model, sample_pixels

X = to_model_input(sample_pixels(2).numpy())


def _item(model_id: str | None, adapter_id: str | None, row: int = 0) -> BatchItem:
    return BatchItem(X[row : row + 1], model_id, adapter_id)


class _Statements:
    """Counts the SQL statements sent on ``engine`` while in use."""

    def __init__(self, engine) -> None:  # noqa: ANN001
        self.engine, self.sent = engine, []

    def _seen(self, _conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        self.sent.append(statement)

    def __enter__(self) -> list[str]:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self.sent

    def __exit__(self, *_exc) -> None:  # noqa: ANN002
        event.remove(self.engine, "before_cursor_execute", self._seen)


def _sql_from_another_process(db_path: str, statement: str) -> None:
    """Run ``statement`` in a separate Python process with plain ``sqlite3`` (no SQLAlchemy,
    so no listener of this process hears of it)."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute(sys.argv[2]); c.commit(); c.close()"
    )
    subprocess.run([sys.executable, "-c", code, db_path, statement], check=True, timeout=60)


@pytest.fixture
def executor(registered, migrated):
    return BatchExecutor(migrated)


def test_a_repeated_batch_reads_only_the_record_version(executor) -> None:
    batch = [_item(None, None), _item("base", "ad1"), _item("other", "ad_other")]
    first = executor.run(batch)
    with _Statements(executor.engine) as sent:
        again = executor.run(batch)
    assert len(sent) == 1 and "record_version" in sent[0]
    assert [[p.digit for p in r] for r in again] == [[p.digit for p in r] for r in first]
    assert [r[0].model_id for r in again] == ["base", "base", "other"]  # default: newest


def test_a_delete_by_another_process_404s_on_the_next_batch(executor, migrated) -> None:
    db_path = migrated.database_url.removeprefix("sqlite:///")
    assert executor.run([_item("base", "ad2")])[0][0].adapter_id == "ad2"
    assert "ad2" in executor.adapters.keys()
    _sql_from_another_process(db_path, "DELETE FROM adapters WHERE id = 'ad2'")
    (result,) = executor.run([_item("base", "ad2")])
    assert isinstance(result, ApiError) and (result.status, result.code) == (
        404,
        "adapter_not_found",
    )
    assert "ad2" not in executor.adapters.keys()  # and its weights are forgotten


def test_a_record_changed_elsewhere_is_served_as_changed(executor, registered, migrated) -> None:
    """ad3's record is pointed at ad4's files: the next batch serves ad4's weights."""
    db_path = migrated.database_url.removeprefix("sqlite:///")
    executor.run([_item("base", "ad3")])
    loads = executor.adapters.stats().loads
    path4 = str(registered.adapters["ad4"][0])
    _sql_from_another_process(db_path, f"UPDATE adapters SET path = '{path4}' WHERE id = 'ad3'")
    (result,) = executor.run([_item("base", "ad3")])
    assert executor.adapters.stats().loads == loads + 1
    base = registered.models["base"][1]
    want = torch.softmax(forward_with_adapters(base, X[:1], [registered.adapters["ad4"][1]]), 1)
    got = torch.tensor([list(result[0].probabilities.values())])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_newer_pretrained_model_becomes_the_default_on_the_next_batch(
    executor, registered, migrated
) -> None:
    assert executor.run([_item(None, None)])[0][0].model_id == "base"
    registered.models["newest"] = registered.models["other"]
    insert_model(migrated, registered, "newest", created_at=datetime.now(UTC) + timedelta(1))
    assert executor.run([_item(None, None)])[0][0].model_id == "newest"


def test_an_unknown_id_is_read_every_time_so_a_new_record_is_found_at_once(
    executor, registered, migrated
) -> None:
    (missing,) = executor.run([_item("base", "ad_new")])
    assert isinstance(missing, ApiError) and missing.status == 404
    registered.new_adapter("ad_new", seed=123)
    with sqlite3.connect(migrated.database_url.removeprefix("sqlite:///")) as conn:
        version = conn.execute("SELECT version FROM record_version").fetchone()[0]
    insert_adapter(migrated, registered, "ad_new")
    (found,) = executor.run([_item("base", "ad_new")])
    assert found[0].adapter_id == "ad_new" and executor.records.version > version


def test_the_cache_starts_again_past_max_entries(executor) -> None:
    cache = RecordCache(executor.engine, executor.records._sessions, None, max_entries=2)
    cache.read({"ad0", "ad1"}, {"base"}, False)  # 3 records cached: over the bound
    reads = cache.reads
    cache.read({"ad0"}, set(), False)
    assert cache.reads == reads + 2  # both tables read again
    cache.read({"ad0"}, set(), False)
    assert cache.reads == reads + 2  # 2 records: within the bound, cached
