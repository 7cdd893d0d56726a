"""The embedded broker: kombu's SQLAlchemy transport, made safe for SQLite and our options.

kombu's ``sqla`` transport passes every broker transport option to ``create_engine``, so
Celery options such as ``polling_interval`` or ``visibility_timeout`` make it fail with
``TypeError``. This subclass builds its engine with :func:`service.db.engine.make_engine`
instead (SQLite in WAL mode with a 30 s busy timeout, so the API and several workers can
share one broker file) and leaves the remaining options to the virtual transport, which
reads ``polling_interval`` (seconds between polls of an empty queue).

Select it with a broker URL ``sqla+<sqlalchemy url>``
(see :func:`service.jobs.queue.broker_params`).
"""

from __future__ import annotations

from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from service.db.engine import make_engine

TRANSPORT_PATH = "service.jobs.broker:Transport"


def _create_tables(engine: Engine, attempts: int = 3) -> None:
    """Create kombu's tables; another process creating them at the same moment is fine."""
    for attempt in range(attempts):
        try:
            kombu_sqla.metadata.create_all(engine)
            return
        except OperationalError:
            if attempt == attempts - 1:
                raise


class Channel(kombu_sqla.Channel):
    """kombu's SQLAlchemy channel with our engine factory."""

    def _engine_from_config(self):  # noqa: ANN202 (kombu's signature)
        return make_engine(self.connection.client.hostname)

    def _open(self):  # noqa: ANN202 (kombu's signature)
        url = self.connection.client.hostname
        if url not in self._engines:
            with kombu_sqla._MUTEX:
                if url not in self._engines:
                    engine = self._engine_from_config()
                    _create_tables(engine)
                    self._engines[url] = engine, sessionmaker(bind=engine)
        return self._engines[url]

    def _get_or_create(self, queue):  # noqa: ANN001, ANN202 (kombu's signature)
        """kombu's, safe across processes: its lock is per process, so two processes
        creating one queue at once made the second fail with ``UNIQUE constraint failed:
        kombu_queue.name``; that one now reads the row the other created."""
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).one()


class Transport(kombu_sqla.Transport):
    """kombu's SQLAlchemy transport using :class:`Channel`."""

    Channel = Channel
