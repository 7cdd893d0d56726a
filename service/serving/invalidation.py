"""How serving learns that an adapter record is gone: the one path into its caches.

Every micro-batch reads the database's record version and re-reads the records it names
when that moved (:mod:`service.serving.records`), and :meth:`BatchExecutor.forget` drops
what it finds deleted, whichever process deleted it. On top of that, a deletion committed *in this
process* is forgotten at once: one pair of SQLAlchemy session listeners, registered when
this module is imported (never per predictor, so no listener is added or removed while
events are being dispatched), collects the ids of ``AdapterRecord`` rows a flush deletes
and, once that transaction commits, calls ``forget`` on every live executor serving the
same database. A rolled-back delete forgets nothing. Bulk ``DELETE`` statements bypass the
ORM's flush; those are caught by the next batch that names the adapter.

Nothing outside serving calls into the caches: ``service.adapters.delete`` only deletes.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Protocol

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from service.db.tables import AdapterRecord

_DELETED_KEY = "serving.deleted_adapter_ids"


class Forgetting(Protocol):
    """What the listeners need of an executor: its engine and :meth:`forget`."""

    engine: Engine

    def forget(self, kind: str, record_id: str, reason: str) -> bool: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def watch(executor: Forgetting) -> None:
    """Have ``executor`` forget adapters this process deletes (held weakly: no leak)."""
    with _lock:
        _live.add(executor)


@event.listens_for(Session, "after_flush")
def _collect_deleted(session: Session, _flush_context: Any) -> None:
    """Remember the ids of adapter records this flush deletes (``session.deleted`` still
    holds them in ``after_flush``)."""
    ids = [obj.id for obj in session.deleted if isinstance(obj, AdapterRecord)]
    if ids:
        session.info.setdefault(_DELETED_KEY, set()).update(ids)


@event.listens_for(Session, "after_commit")
def _forget_committed(session: Session) -> None:
    """The deletions are durable now: every executor on this database forgets them."""
    ids = session.info.pop(_DELETED_KEY, None)
    if not ids:
        return
    engine = session.get_bind()
    with _lock:
        executors = [e for e in _live if e.engine is engine]
    for executor in executors:
        for adapter_id in ids:
            executor.forget("adapter", adapter_id, "record deleted")


@event.listens_for(Session, "after_rollback")
def _drop_rolled_back(session: Session) -> None:
    session.info.pop(_DELETED_KEY, None)
