"""Fixtures for the dashboard's browser tests: one live stack (``lora-service api`` and one
``lora-service worker``, embedded backend, API keys on) for the module, Debian's headless
Chromium driven by Playwright, and where screenshots and measurements go."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.e2e_stack import (
    API_KEY,
    REPO_ROOT,
    Stack,
    embedded_backend,
    mnist_dir,
    running_stack,
)

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "var" / "screenshots"
MEASUREMENTS = SCREENSHOTS / "measurements.json"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's package; Playwright's own download cannot work offline)."""
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Migrated SQLite database, the API (``API_KEYS`` set) and one worker process."""
    root = tmp_path_factory.mktemp("ui")
    with running_stack(embedded_backend(root, mnist_dir()), root) as stack:
        yield stack


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    """HTTP client of the stack's API (bearer key set)."""
    with stack.client() as client:
        yield client


@pytest.fixture
def open_page(browser: Any, stack: Stack) -> Iterator[Callable[..., Any]]:
    """``open_page(path, key=API_KEY)``: a page in a fresh context (empty cache and
    sessionStorage), the tab's key set first unless ``key`` is None."""
    contexts = []

    def open_(path: str, key: str | None = API_KEY) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        if key is not None:
            context.add_init_script(f"sessionStorage.setItem('lora-api-key', {json.dumps(key)})")
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(stack.url + path)
        return page

    yield open_
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as ``var/screenshots/<name>.png`` (ignored by git;
    ``make screenshots`` copies them to docs/screenshots/ for the README)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def page_weight(page: Any) -> dict[str, int]:
    """Bytes the page transferred so far (document + every resource, API calls included),
    from the Resource Timing entries: ``transfer`` (with headers), ``body`` (encoded), and
    ``static_body`` (the files under /ui/ and /docs-assets/: the page without its data)."""
    return page.evaluate(
        """() => {
          const all = [...performance.getEntriesByType('navigation'),
                       ...performance.getEntriesByType('resource')];
          const sum = (list, key) => list.reduce((s, e) => s + e[key], 0);
          const assets = all.filter((e) => /\\/(ui|docs-assets)\\//.test(new URL(e.name).pathname));
          return {requests: all.length, transfer: sum(all, 'transferSize'),
                  body: sum(all, 'encodedBodySize'), static_body: sum(assets, 'encodedBodySize')};
        }"""
    )


def record(name: str, value: Any) -> None:
    """Add one figure to ``var/screenshots/measurements.json``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data[name] = value
    MEASUREMENTS.write_text(json.dumps(data, indent=2, sort_keys=True))
