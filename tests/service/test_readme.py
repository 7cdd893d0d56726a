"""The README's settings table is the settings class (no undocumented or stale variable)."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import settings_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_settings_class() -> None:
    text = README.read_text()
    match = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert match, "README lacks the settings markers"
    assert match.group(1) == settings_markdown(), "run: python -m service.config, paste into README"


def test_readme_examples_exist() -> None:
    text = README.read_text()
    for path in re.findall(r"@(docs/examples/\S+\.png)", text):
        assert (README.parent / path).is_file(), path
    assert "make demo" in text and "make test" in text
