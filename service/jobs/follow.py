"""Follow a job's event log as it grows: what a live stream (SSE) of ``/jobs/{id}/events``
sends.

The database is the only source: any API process can serve any stream, whichever worker
(on whichever host) writes the events. The follower reads the events after its cursor every
``EVENT_POLL_SECONDS`` (0.2 s by default; one indexed query per stream), so an event reaches
a connected client within about that long of its commit. Events of one job commit in the
order of their ids (:mod:`service.db.event_records`), so reading "after the last id sent"
never skips or repeats one. The follow ends after the job's terminal status event, or at
once for a finished job whose log holds nothing after the cursor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.core.vocab import TERMINAL_STATUSES
from service.db.event_records import list_events
from service.db.tables import JobEventRecord, JobRecord

READ_BATCH = 200


def is_terminal(event: JobEventRecord) -> bool:
    """Whether ``event`` reports the job's end (the last event a stream sends)."""
    return event.type == "status" and event.data.get("status") in TERMINAL_STATUSES


def _read(factory: sessionmaker[Session], job_id: str, after: int) -> tuple[list, bool]:
    """(events after ``after``, whether the job is finished), in one short transaction."""
    with factory() as session:
        events = list_events(session, job_id, after=after, limit=READ_BATCH)
        status = session.scalar(select(JobRecord.status).where(JobRecord.id == job_id))
        for event in events:
            session.expunge(event)
    return events, status in TERMINAL_STATUSES or status is None


async def follow_events(
    factory: sessionmaker[Session],
    job_id: str,
    *,
    after: int,
    poll_seconds: float,
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[JobEventRecord]:
    """Yield job ``job_id``'s events numbered above ``after`` as they are committed, oldest
    first, until its terminal status event (or, for a finished job, the end of its log).

    Args:
        after: the last event id the client has (0 for all).
        poll_seconds: the wait between reads when nothing new was found (s).
        disconnected: returns True once the client has gone (the follow then stops).
    """
    cursor = after
    while not await disconnected():
        events, finished = await asyncio.to_thread(_read, factory, job_id, cursor)
        for event in events:
            cursor = event.seq
            yield event
            if is_terminal(event):
                return
        if not events:
            if finished:
                return
            await asyncio.sleep(poll_seconds)
