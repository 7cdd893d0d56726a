"""The record version (migration 0007): the database bumps it with every committed change
to ``models`` or ``adapters``, by any writer (the ORM or a plain SQL statement: triggers
see rows, not clients), on SQLite and Postgres; not for a rolled-back change, not for
other tables. Serving's record cache (``service.serving.records``) is only as correct as
this."""

from __future__ import annotations

import sqlalchemy as sa
from svc_helpers import add_model

from service.db.engine import get_engine, session_scope
from service.db.record_version import read_record_version
from service.db.tables import AdapterRecord, JobRecord


def _adapter(adapter_id: str, model_id: str) -> AdapterRecord:
    return AdapterRecord(
        id=adapter_id,
        base_model_id=model_id,
        r=4,
        lora_alpha=8.0,
        target_modules=["linear1"],
        trainable_parameters=1,
        classes=[5, 6, 7, 8, 9],
        path="/nonexistent",
    )


def test_every_committed_change_to_models_or_adapters_bumps_the_version(db_url: str) -> None:
    engine = get_engine(db_url)

    def moved(change) -> bool:  # noqa: ANN001 (a callable of no arguments)
        before = read_record_version(engine)
        change()
        return read_record_version(engine) > before

    model_id = add_model(db_url)
    ad = f"ad_{model_id}"

    def orm_insert() -> None:
        with session_scope(db_url) as s:
            s.add(_adapter(ad, model_id))

    def orm_update() -> None:
        with session_scope(db_url) as s:
            s.get(AdapterRecord, ad).path = "/moved"

    def sql(statement: str):  # noqa: ANN202
        def run() -> None:
            with engine.begin() as conn:
                conn.execute(sa.text(statement), {"m": model_id, "a": ad})

        return run

    def rolled_back() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("UPDATE models SET path = '/x' WHERE id = :m"), {"m": model_id})
            conn.rollback()

    def other_table() -> None:
        with session_scope(db_url) as s:
            s.add(JobRecord(id=f"job_{model_id}", kind="pretrain", status="queued", config={}))

    assert moved(orm_insert)
    assert moved(orm_update)
    assert moved(sql("UPDATE adapters SET path = '/again' WHERE id = :a"))
    assert moved(sql("UPDATE models SET test_accuracy = 0.5 WHERE id = :m"))
    assert not moved(rolled_back)
    assert not moved(other_table)
    assert moved(sql("DELETE FROM adapters WHERE id = :a"))
    assert moved(sql("DELETE FROM models WHERE id = :m"))


def test_0007_downgrades_and_upgrades_again(fresh_url: str) -> None:
    from alembic import command

    from service.db.migrations import alembic_config, upgrade

    upgrade(fresh_url)
    command.downgrade(alembic_config(fresh_url), "0006")
    engine = get_engine(fresh_url)
    assert "record_version" not in sa.inspect(engine).get_table_names()
    add_model(fresh_url)  # no trigger left behind that would need the table
    upgrade(fresh_url)
    before = read_record_version(engine)
    add_model(fresh_url)
    assert read_record_version(engine) == before + 1
