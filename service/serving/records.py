"""The records a micro-batch resolves against, cached until the database says they changed.

Before issue 16 every micro-batch read its model and adapter records (a query per table,
~1.1 ms of the predictor thread's CPU and ~2.3 ms of its time under load, on SQLite). Now
:class:`RecordCache` keeps what it read and, per batch, reads only the *record version*
(:func:`service.db.record_version.read_record_version`: one row that the database's own
triggers bump in the same transaction as any insert, update or delete on ``models`` or
``adapters``, whichever process or tool wrote it). When the version has moved, everything
cached is dropped and read again as batches name it. So a record deleted or changed by any
process is seen by the next batch that starts after the change commits, in every API
process, as before; a record that is not cached (never seen, or not found last time) is
always read, so one registered a moment ago is usable at once.

Read order makes this safe without a shared transaction: the version is read *before* the
records, so a cached row is never older than the version it is filed under (a change that
commits in between bumps the version again, and the next batch re-reads).

Used only on the predictor's thread (not thread-safe).
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from service.db import adapter_records, model_records
from service.db.record_version import read_record_version


@dataclass(frozen=True)
class ModelFacts:
    """What serving needs of a model record."""

    id: str
    path: str
    classes: tuple[int, ...]


@dataclass(frozen=True)
class AdapterFacts:
    """What serving needs of an adapter record."""

    id: str
    base_model_id: str
    path: str
    classes: tuple[int, ...]


@dataclass(frozen=True)
class Records:
    """The records one batch names, as of this batch.

    ``adapters``/``models``: the ones that exist, by id; ``gone_adapters``/``gone_models``:
    ids named (models: also the named adapters' base models and the default) that have no
    record; ``default_id``: the model used when a request names neither id (None: none).
    """

    adapters: dict[str, AdapterFacts]
    models: dict[str, ModelFacts]
    gone_adapters: frozenset[str]
    gone_models: frozenset[str]
    default_id: str | None


_UNKNOWN: Any = object()


class RecordCache:
    """Model and adapter records by id, valid while the record version stays the same.

    Args:
        engine: the database (migrated to 0007 or later: it has ``record_version``).
        sessions: its session factory, for the reads on a miss.
        default_model_id: ``settings.default_model_id``; when None the default is the
            newest pre-trained model (read once per version).
        max_entries: past this many cached records, the cache starts again from empty
            (bounds memory when requests name very many adapters).
    """

    def __init__(
        self,
        engine: Engine,
        sessions: Callable[[], Any],
        default_model_id: str | None,
        max_entries: int = 4096,
    ) -> None:
        self.engine = engine
        self._sessions = sessions
        self._configured_default = default_model_id
        self.max_entries = max_entries
        self.version: int | None = None
        self.reads = 0
        """Queries for records beyond the version (at most two per batch); for tests."""
        self._adapters: dict[str, AdapterFacts] = {}
        self._models: dict[str, ModelFacts] = {}
        self._default: str | None = _UNKNOWN

    def read(self, adapter_ids: Set[str], model_ids: Set[str], needs_default: bool) -> Records:
        """The records of ``adapter_ids`` and ``model_ids`` (plus the named adapters' base
        models, and the default model when ``needs_default``), as of now.

        One one-row read of the record version; records not cached under that version are
        read then (one query per table, at most).

        Raises:
            sqlalchemy.exc.DBAPIError: the database is unreachable (the API answers 503).
        """
        version = read_record_version(self.engine)
        if version != self.version or len(self._adapters) + len(self._models) > self.max_entries:
            self._adapters, self._models, self._default = {}, {}, _UNKNOWN
            self.version = version
        missing = adapter_ids - self._adapters.keys()
        if missing or (needs_default and self._default is _UNKNOWN):
            self.reads += 1
            with self._sessions() as session:
                for row in adapter_records.adapters_by_id(session, missing).values():
                    self._adapters[row.id] = AdapterFacts(
                        row.id, row.base_model_id, row.path, tuple(row.classes)
                    )
                if needs_default and self._default is _UNKNOWN:
                    self._default = self._configured_default or model_records.newest_pretrained_id(
                        session
                    )
        adapters = {i: self._adapters[i] for i in adapter_ids if i in self._adapters}
        default_id = self._default if needs_default else None
        wanted = set(model_ids) | {a.base_model_id for a in adapters.values()}
        if default_id is not None:
            wanted.add(default_id)
        missing = wanted - self._models.keys()
        if missing:
            self.reads += 1
            with self._sessions() as session:
                for row in model_records.models_by_id(session, missing).values():
                    self._models[row.id] = ModelFacts(row.id, row.path, tuple(row.classes))
        models = {i: self._models[i] for i in wanted if i in self._models}
        return Records(
            adapters,
            models,
            frozenset(adapter_ids - adapters.keys()),
            frozenset(wanted - models.keys()),
            default_id,
        )
