"""Test-only fault injection: a ``sitecustomize`` module that makes a worker process stop
half-way through writing a training checkpoint, so that a test can SIGKILL it right there.

Nothing in the service reads a setting for this: the test starts one worker with
``PYTHONPATH`` pointing at the directory :func:`install_hook` writes, and Python imports
``sitecustomize`` from it at start-up (a documented interpreter hook). The patched
``models.checkpoint.write_file_atomically`` writes the first half of the N-th
training-state file to the same kind of temporary file the real one uses, fsyncs it,
creates ``pause_marker`` and sleeps forever.
"""

from __future__ import annotations

from pathlib import Path

HOOK = '''"""Written by tests/robustness/pause_in_write.py: pause inside checkpoint write {n}."""
import os
import time
import uuid
from pathlib import Path

import models.checkpoint as _checkpoint

_real_write = _checkpoint.write_file_atomically
_calls = [0]


def _write_then_pause(path, data):
    path = Path(path)
    if path.name == "training_state.safetensors":
        _calls[0] += 1
        if _calls[0] == {n}:
            tmp = path.parent / f".{{path.name}}.tmp-{{uuid.uuid4().hex}}"
            with open(tmp, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            Path({marker!r}).touch()
            while True:
                time.sleep(1)
    return _real_write(path, data)


_checkpoint.write_file_atomically = _write_then_pause
'''


def install_hook(directory: Path, *, pause_marker: Path, pause_at_write: int) -> Path:
    """Write ``sitecustomize.py`` into ``directory``; returns the directory (for PYTHONPATH).

    Args:
        pause_marker: file created once the write has paused.
        pause_at_write: which training-state write to stop in (3 = after epoch 3).
    """
    directory.mkdir(parents=True, exist_ok=True)
    text = HOOK.format(n=int(pause_at_write), marker=str(pause_marker))
    (directory / "sitecustomize.py").write_text(text)
    return directory
