"""Test-only fault injection for the API process: a ``sitecustomize`` module (as in
:mod:`pause_in_write`) that freezes ``lora-service api`` at one point of a write, so that a
test can SIGKILL it right there. Points:

* ``enqueue``: ``POST /jobs`` after the job row is committed, before its message is sent;
* ``adapter_write``: ``POST /adapters`` while the files are in the temporary directory;
* ``adapter_rename``: ``POST /adapters`` after the rename, before the record is committed.

Each creates ``marker`` once paused, then sleeps forever.
"""

from __future__ import annotations

from pathlib import Path

HOOK = '''"""Written by tests/robustness/pause_in_api.py: pause at {point!r}."""
import time
from pathlib import Path


def _pause():
    Path({marker!r}).touch()
    while True:
        time.sleep(1)


if {point!r} == "enqueue":
    import service.jobs.queue as _queue

    _queue.enqueue_job = lambda job_id, settings=None: _pause()
else:
    import models.checkpoint as _checkpoint

    _real = _checkpoint.write_dir_atomically

    def _write_then_pause(directory, write):
        if {point!r} == "adapter_write":
            _real(directory, lambda tmp: (write(tmp), _pause()))
        _real(directory, write)
        _pause()

    _checkpoint.write_dir_atomically = _write_then_pause
'''


def install_api_hook(directory: Path, *, point: str, marker: Path) -> Path:
    """Write ``sitecustomize.py`` for ``point`` into ``directory``; returns it (PYTHONPATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(HOOK.format(point=point, marker=str(marker)))
    return directory
