"""benchmarks/device_check.sh in its smoke mode, as it runs on a host without CUDA: the
CUDA parts say SKIP, the CPU figures are printed, nothing of the service is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def test_device_check_smoke_runs_without_cuda(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    script = REPO / "benchmarks" / "device_check.sh"
    done = subprocess.run(
        ["bash", str(script), "--smoke", "--data-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "data: synthetic data (no MNIST idx files found)" in out  # tmp_path has none
    assert "PASS no service library imported" in out
    assert "training speed, steps/s" in out and "batched LoRA forward" in out
    assert "SKIP training benchmark: --smoke" in out
    if not torch.cuda.is_available():
        assert "SKIP cuda: no CUDA device" in out
        assert "1 skipped" in out or "2 skipped" in out or "deselected" in out, out


def test_device_check_reads_gzipped_mnist(fake_mnist_dir: Path) -> None:
    """The four idx files as .gz (how they travel to a GPU machine: about 11 MB)."""
    import gzip

    for path in (fake_mnist_dir / "MNIST" / "raw").iterdir():
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--smoke",
         "--data-dir", str(fake_mnist_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"data: MNIST from {fake_mnist_dir / 'MNIST' / 'raw'}/*.gz" in done.stdout
