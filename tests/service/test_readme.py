"""The README's settings table is the settings class (no undocumented or stale variable)."""

from __future__ import annotations

import re
from pathlib import Path

from service.core.settings import settings_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_settings_class() -> None:
    text = README.read_text()
    match = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert match, "README lacks the settings markers"
    assert match.group(1) == settings_markdown(), (
        "run: python -m service.core.settings, paste into README"
    )


def test_readme_examples_exist() -> None:
    text = README.read_text()
    for path in re.findall(r"@(docs/examples/\S+\.png)", text):
        assert (README.parent / path).is_file(), path
    assert "make demo" in text and "make test" in text


def test_api_keys_never_show_in_the_settings_repr(monkeypatch) -> None:
    from service.core.settings import Settings

    monkeypatch.setenv("API_KEYS", "first-secret-key, second-secret-key")
    monkeypatch.setenv("API_KEY", "cli-secret-key")
    settings = Settings(_env_file=None)
    assert [k.get_secret_value() for k in settings.api_keys] == [
        "first-secret-key",
        "second-secret-key",
    ]
    assert settings.api_key.get_secret_value() == "cli-secret-key"
    assert "secret-key" not in repr(settings) and "secret-key" not in str(settings)
