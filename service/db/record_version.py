"""The record version: a number the database bumps with every change to ``models`` or
``adapters`` (triggers of migration 0007, whoever writes), read by serving to know when the
records it caches are stale (:mod:`service.serving.records`)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from service.db.tables import RecordVersion

_QUERY = select(RecordVersion.version).where(RecordVersion.id == 1)


def read_record_version(engine: Engine) -> int:
    """The current record version (one one-row read, its own short transaction).

    Raises:
        sqlalchemy.exc.DBAPIError: the database is unreachable (the API answers 503).
        sqlalchemy.exc.NoResultFound: the row is missing (a database not migrated to 0007).
    """
    with engine.connect() as conn:
        return conn.execute(_QUERY).scalar_one()
