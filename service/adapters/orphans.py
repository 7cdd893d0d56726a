"""Files an interrupted import left behind: removed when an API process starts.

An adapter import (:func:`service.adapters.upload.import_adapter`) writes the files into
``.<id>.tmp-*`` beside the final directory, renames it to ``adapters/<id>/`` and only then
commits the record. An API process killed in between leaves either a temporary directory
or a complete but unregistered adapter directory: never a registered half-import, but
files nobody reads. :func:`sweep_orphans` removes both kinds once they are older than
``older_than`` seconds (so that an import still running in another API process is left
alone), in ``adapters/`` and ``models/`` (whose atomic writes leave the same temporary
names).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.artifacts import remove_tree
from service.core.settings import Settings
from service.db.tables import AdapterRecord

log = logging.getLogger(__name__)

ORPHAN_AGE_SECONDS = 600.0
"""An unregistered directory younger than this may belong to an import still running."""


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and (".tmp-" in path.name or ".old-" in path.name)


def sweep_orphans(
    settings: Settings, session: Session, older_than: float = ORPHAN_AGE_SECONDS
) -> list[Path]:
    """Remove temporary directories of interrupted writes and unregistered adapter
    directories, older than ``older_than`` seconds; returns what was removed."""
    cutoff = time.time() - older_than
    removed: list[Path] = []
    adapters = settings.artifact_dir / "adapters"
    registered = (
        set(session.scalars(select(AdapterRecord.id)).all()) if adapters.is_dir() else set()
    )
    for parent in (adapters, settings.artifact_dir / "models"):
        if not parent.is_dir():
            continue
        for path in parent.iterdir():
            if not path.is_dir() or path.stat().st_mtime > cutoff:
                continue
            unregistered = parent == adapters and not _is_temporary(path)
            if _is_temporary(path) or (unregistered and path.name not in registered):
                remove_tree(path)
                removed.append(path)
    if removed:
        log.warning("removed %d file(s) left by interrupted writes: %s", len(removed), removed)
    return removed
