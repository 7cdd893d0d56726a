"""Deleting an adapter: its record (committed first), then its files.

Serving caches are not called from here: the serving layer watches adapter deletions
itself (:mod:`service.serving.invalidation`), in this process at once and in every other
process at the next batch that names the adapter.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from service.core import store
from service.core.errors import not_found
from service.core.settings import Settings, get_settings
from service.db import adapter_records

log = logging.getLogger(__name__)


def delete_adapter(session: Session, adapter_id: str, settings: Settings | None = None) -> None:
    """Delete the adapter's record (committed), then its files (in the artifact store).

    Raises:
        ApiError: 404 ``adapter_not_found``.
    """
    record = adapter_records.delete_adapter(session, adapter_id)
    if record is None:
        raise not_found("adapter", adapter_id)
    session.commit()
    store.delete(settings or get_settings(), record.path)
    log.info("deleted adapter %s (%s)", adapter_id, record.path)
