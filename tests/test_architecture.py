"""The architecture as tests: import-linter's contracts (pyproject.toml) hold, and the checker
really fails on a broken one; no job config is read by string key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_are_kept() -> None:
    result = _lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "kept" in result.stdout


def test_a_broken_contract_fails(tmp_path: Path) -> None:
    """The api package does import FastAPI: a contract forbidding it must be reported."""
    config = tmp_path / "broken.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["service"]\ninclude_external_packages = true\n\n'
        '[[tool.importlinter.contracts]]\nname = "api without fastapi"\ntype = "forbidden"\n'
        'source_modules = ["service.api"]\nforbidden_modules = ["fastapi"]\n'
    )
    result = _lint("--config", str(config))
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout


def test_no_job_config_is_read_by_string_key() -> None:
    """Job configs cross the queue as a typed spec (service.core.job_spec), never a dict."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for package in ("service", "worker")
        for path in (REPO / package).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"cfg\[\"|config\[\"", line)
    ]
    assert offenders == []
