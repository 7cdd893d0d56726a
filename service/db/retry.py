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

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCKED_MESSAGES = ("database is locked", "database table is locked", "database is busy")


def is_locked(exc: BaseException) -> bool:
    """True for SQLite's lock errors (``SQLITE_BUSY`` / ``SQLITE_LOCKED``)."""
    return isinstance(exc, OperationalError) and any(m in str(exc) for m in LOCKED_MESSAGES)


def is_unreachable(exc: BaseException) -> bool:
    """True for errors that mean the database cannot be reached right now: connection
    refused or lost, server shutting down, connection terminated by an administrator
    (``OperationalError``/``InterfaceError``, or any error that invalidated its connection).
    SQLite's lock errors are :func:`is_locked` instead."""
    if not isinstance(exc, DBAPIError) or is_locked(exc):
        return False
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


def retry_unreachable(
    work: Callable[[], T], *, give_up: Callable[[], bool], first_delay: float = 0.2
) -> T:
    """Run ``work()`` (opening its own session), retrying while the database is unreachable.

    Between tries the delay doubles from ``first_delay`` seconds up to 2 s; the loop ends
    when ``work`` succeeds or ``give_up()`` is true (a worker passes its lease fence, so it
    never writes after another run may have started).

    Raises:
        DBAPIError: the last :func:`is_unreachable` error once ``give_up()`` is true, or any
            other database error at once.
    """
    delay = first_delay
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not is_unreachable(exc) or give_up():
                raise
            log.warning("database unreachable (%s); retrying in %.1f s", exc.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


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
