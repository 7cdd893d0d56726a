"""The web dashboard at ``/ui`` and the API docs (``/docs``, ``/redoc``) served offline.

* ``/ui/``: static pages (plain ES modules and CSS in ``service/api/ui/``, no build step)
  that use only the public REST API, from the browser, with the tab's API key.
* ``GET /``: a browser (``Accept: text/html``) is redirected to ``/ui/``; any other client
  gets the 404 envelope the API answered there before.
* ``/docs`` (Swagger UI) and ``/redoc``: FastAPI's pages, but their script, stylesheet and
  favicon come from the ``fastapi-offline`` package's files under ``/docs-assets/`` instead
  of a CDN, so they render on a machine without internet.

Every path here is public (no API key): the pages hold no data; the data they show comes
from the API, which checks the key the tab sends.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.strict import StrictRoute

UI_DIR = Path(__file__).with_name("ui")
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).with_name("static")
UI_PATH = "/ui"
DOCS_PATH, REDOC_PATH, OAUTH2_REDIRECT_PATH = "/docs", "/redoc", "/docs/oauth2-redirect"
ASSETS_PATH = "/docs-assets"
PUBLIC_PATHS = ("/", UI_PATH, DOCS_PATH, REDOC_PATH, OAUTH2_REDIRECT_PATH)
PUBLIC_PREFIXES = (UI_PATH + "/", ASSETS_PATH + "/")
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)
"""Content-Security-Policy of the docs pages: everything from this origin. ReDoc's sidebar
always renders the Redocly logo from cdn.redoc.ly; this keeps the browser from fetching it
(ReDoc hides the image when it fails to load)."""

router = APIRouter(route_class=StrictRoute, include_in_schema=False)


@router.get("/")
def root(request: Request) -> Response:
    """Browsers go to the dashboard; API clients get 404 as before."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(UI_PATH + "/", status_code=307)
    raise StarletteHTTPException(404, "Not Found")


@router.get(UI_PATH)
def ui_slash() -> RedirectResponse:
    """``/ui`` -> ``/ui/`` (the pages' relative links need the slash)."""
    return RedirectResponse(UI_PATH + "/", status_code=307)


@router.get(DOCS_PATH)
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI with its assets served from this API."""
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get(OAUTH2_REDIRECT_PATH)
def swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_PATH)
def redoc(request: Request) -> HTMLResponse:
    """ReDoc with its script served from this API (``with_google_fonts=False``)."""
    page = get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def install_dashboard(app: FastAPI) -> None:
    """Add the dashboard, the offline docs and the root redirect to ``app`` (built with
    ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not registered)."""
    app.include_router(router)
    app.mount(UI_PATH, StaticFiles(directory=UI_DIR, html=True), name="ui")
    app.mount(ASSETS_PATH, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
