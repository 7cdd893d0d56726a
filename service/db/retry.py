"""Retry a short write transaction that SQLite refused with "database is locked".

SQLite (the embedded default) runs in WAL mode with a busy timeout
(:mod:`service.db.engine`), so a writer normally waits for the lock. A transaction that
read before writing can still be refused at once (``SQLITE_BUSY`` when its snapshot went
stale), and a long pile-up can outlast the busy timeout. Such a transaction is rolled back
and run again from the start; on Postgres the error never matches and nothing is retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCKED_MESSAGES = ("database is locked", "database table is locked", "database is busy")


def is_locked(exc: BaseException) -> bool:
    """True for SQLite's lock errors (``SQLITE_BUSY`` / ``SQLITE_LOCKED``)."""
    return isinstance(exc, OperationalError) and any(m in str(exc) for m in LOCKED_MESSAGES)


def retry_locked(
    session: Session, work: Callable[[], T], *, attempts: int = 6, first_delay: float = 0.05
) -> T:
    """Run ``work()`` (one whole transaction, ending in a commit), retrying lock errors.

    Between tries the session is rolled back and the delay doubles from ``first_delay``
    seconds (0.05 s .. 1.6 s over 6 tries, on top of each try's busy timeout).

    Raises:
        OperationalError: still locked after ``attempts`` tries, or any other database error.
    """
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except OperationalError as exc:
            if not is_locked(exc) or attempt == attempts:
                raise
            session.rollback()
            delay = first_delay * 2 ** (attempt - 1)
            log.warning("database locked (try %d/%d); retrying in %.2f s", attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
