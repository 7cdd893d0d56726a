"""The dashboard's routes without a browser: the root redirect, what is public with API keys
on, the static files, and docs pages that name no outside asset."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.dashboard import DOCS_ASSETS_DIR, UI_DIR

KEY = "ui-route-key"


@pytest.fixture
def keyed(migrated) -> Iterator[TestClient]:
    """A client of the real app with ``API_KEYS`` set (no key sent unless asked)."""
    from service.api.app import create_app

    settings = type(migrated).model_validate({**migrated.model_dump(), "api_keys": [KEY]})
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield client


def test_root_sends_browsers_to_the_dashboard_and_api_clients_a_404(keyed: TestClient) -> None:
    browser = keyed.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 307 and browser.headers["location"] == "/ui/"
    api = keyed.get("/", headers={"Accept": "application/json"})
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
    assert keyed.get("/ui").headers["location"] == "/ui/"


def test_pages_and_assets_are_public_the_data_is_not(keyed: TestClient) -> None:
    index = keyed.get("/ui/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    modules = re.findall(r'src="([^"]+\.js)"', index.text)
    assert modules == ["app.js"]
    for name in sorted(p.name for p in UI_DIR.iterdir()):
        assert keyed.get(f"/ui/{name}").status_code == 200, name
    assert keyed.get("/jobs").status_code == 401  # what the pages show still needs the key
    assert keyed.get("/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert keyed.get("/ui/../jobs").status_code in (401, 404)  # no way around the key


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_this_api(keyed: TestClient, path: str) -> None:
    page = keyed.get(path)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(u.startswith("/docs-assets/") for u in urls), urls
    assert "fonts.googleapis" not in page.text and "cdn.jsdelivr" not in page.text
    for url in urls:
        asset = keyed.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert {p.name for p in DOCS_ASSETS_DIR.iterdir()} >= {
        "swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"
    }  # fmt: skip


def test_every_ui_module_imports_only_local_files() -> None:
    """Plain ES modules, no CDN: every import is a relative path to a file that exists."""
    for module in UI_DIR.glob("*.js"):
        text = module.read_text()
        imports = re.findall(r'(?:from|import\()\s*"([^"]+)"', text)
        for target in imports:
            assert target.startswith("./") and (UI_DIR / target[2:]).is_file(), (module, target)
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), module
