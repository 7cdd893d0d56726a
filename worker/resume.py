"""Resume a requeued job from its last finished epoch.

``models.training.train(checkpoint_path=...)`` restores weights, optimizer state and RNG
states from the checkpoint and continues with the next epoch; :func:`prepare_resume` makes
the checkpoint directory ready for that and keeps the job's metrics whole.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from service.db.tables import JobRecord
from service.jobs import state as job_state

log = logging.getLogger(__name__)


def prepare_resume(
    factory: sessionmaker[Session], job: JobRecord, worker_id: str, path: Path
) -> int:
    """Get the checkpoint at ``path`` ready for ``models.training.train`` to resume from.

    Removes temporary files that a write killed half-way left behind (the checkpoint itself
    is replaced atomically, so it holds the last finished epoch). An unreadable checkpoint
    is moved aside (``*.corrupt``) and the job restarts from epoch 1. The metrics of the
    epochs the checkpoint holds are written again (upserts), in case the previous run died
    between writing the checkpoint and recording the epoch.

    Returns:
        The last finished epoch in the checkpoint, 0 when training starts afresh.
    """
    from models.checkpoint import CheckpointError, read_training_meta

    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{path.name}.tmp-*"):
            leftover.unlink(missing_ok=True)
    try:
        meta = read_training_meta(path)
    except CheckpointError:
        log.warning("job %s: unreadable checkpoint %s; starting afresh", job.id, path)
        path.replace(path.with_name(f"{path.name}.corrupt"))
        return 0
    if meta is None:
        return 0
    for values in meta.get("extra", {}).get("history", []):
        values = dict(values)
        epoch = int(values.pop("epoch"))
        with factory() as session:
            job_state.record_epoch(session, job.id, worker_id, epoch, values)
    epoch = int(meta["epoch"])
    log.info("job %s resumes after epoch %d (attempt %d)", job.id, epoch, job.attempt)
    return epoch
