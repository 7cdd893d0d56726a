"""A job's resumable training state in the artifact store, so that a job resumes on
another host (the worker that took it over has never seen the first worker's files).

``models.training.train`` reads and writes the state as a local file
(``ARTIFACT_DIR/checkpoints/{job_id}/training_state.safetensors``). With an ``s3://``
``ARTIFACT_URL`` that file is uploaded after every epoch to the key
``checkpoints/{job_id}/state`` (:func:`save_state`) and downloaded before training when the
local file is missing (:func:`restore_state`). With the local store all three are no-ops:
the file already is the store.
"""

from __future__ import annotations

import logging
import shutil

from service.core import store
from service.core.artifacts import TRAINING_STATE_FILE, checkpoint_dir, checkpoint_file
from service.core.settings import Settings

log = logging.getLogger(__name__)


def state_key(job_id: str) -> str:
    """The store key of a job's resumable training state."""
    return f"checkpoints/{job_id}/state"


def save_state(settings: Settings, job_id: str) -> None:
    """Upload the local training-state file (remote store only; skipped when absent)."""
    backend = store.get_store(settings)
    if not backend.remote or not checkpoint_file(settings, job_id).is_file():
        return
    backend.put_dir(state_key(job_id), checkpoint_dir(settings, job_id))


def restore_state(settings: Settings, job_id: str) -> bool:
    """Download the job's training state when this host has none; True when restored.

    A missing state (no epoch finished yet) restores nothing; a corrupt one is logged and
    skipped (the job then starts afresh, as with an unreadable local checkpoint).

    Raises:
        ArtifactUnavailable: ``artifact_store_unreachable``.
    """
    backend = store.get_store(settings)
    local = checkpoint_file(settings, job_id)
    if not isinstance(backend, store.S3Store) or local.is_file():
        return False
    try:
        directory = backend.fetch(backend.ref(state_key(job_id)))
    except store.ArtifactUnavailable as exc:
        if exc.code == "artifact_store_unreachable":
            raise
        if exc.code == "artifact_corrupt":
            log.warning("job %s: training state in the store is corrupt (%s)", job_id, exc)
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-restore")
    shutil.copyfile(directory / TRAINING_STATE_FILE, tmp)
    tmp.replace(local)
    log.info("job %s: training state restored from the store", job_id)
    return True


def drop_state(settings: Settings, job_id: str) -> None:
    """Remove the job's training state here and in the store (kept epochs stay)."""
    checkpoint_file(settings, job_id).unlink(missing_ok=True)
    if store.get_store(settings).remote:
        store.get_store(settings).delete(state_key(job_id))
