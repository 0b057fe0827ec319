"""``/docs`` (Swagger UI) and ``/redoc`` served from a packaged copy of their assets, so they work offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google), so on a machine without
internet access they are blank. The assets come from the ``fastapi-offline`` package (Swagger UI 5, which reads
the OpenAPI 3.1 document FastAPI writes, and ReDoc 2; MIT / Apache-2.0) and are served under
``/docs/assets/``; nothing on either page names another host (Swagger UI's online validator badge is off too).
Without that package both pages say so and point to ``/openapi.json`` instead of showing a blank page.
"""

from __future__ import annotations

import html
import importlib.util
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import FileResponse, HTMLResponse, Response

ASSETS_PACKAGE = "fastapi-offline"
ASSETS_URL = "/docs/assets"
# file -> media type: everything the two pages load
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL = "/docs", "/redoc", "/docs/oauth2-redirect"
# what the API-key gate leaves open (documentation, no data)
DOC_PATHS = frozenset({DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL} | {f"{ASSETS_URL}/{name}" for name in ASSETS})


@lru_cache(maxsize=1)
def assets_dir() -> Path | None:
    """The folder holding every file of :data:`ASSETS`, or None when ``fastapi-offline`` is not installed (found
    without importing it)."""
    try:
        spec = importlib.util.find_spec("fastapi_offline")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if all((folder / name).is_file() for name in ASSETS) else None


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/docs/oauth2-redirect``, ``/redoc`` and ``/docs/assets/*`` to an app created with
    ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"

    def root(request: Request) -> str:
        return str(request.scope.get("root_path") or "")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> Response:
        if assets_dir() is None:
            return _missing_page(f"{root(request)}{openapi_url}", "Swagger UI")
        base = f"{root(request)}{ASSETS_URL}"
        return get_swagger_ui_html(
            openapi_url=f"{root(request)}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{base}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}/swagger-ui.css",
            swagger_favicon_url=f"{base}/favicon.png",
            oauth2_redirect_url=f"{root(request)}{OAUTH2_REDIRECT_URL}",
            # validatorUrl None: no badge fetched from the online validator
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> Response:
        if assets_dir() is None:
            return _missing_page(f"{root(request)}{openapi_url}", "ReDoc")
        base = f"{root(request)}{ASSETS_URL}"
        return get_redoc_html(
            openapi_url=f"{root(request)}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}/redoc.standalone.js",
            redoc_favicon_url=f"{base}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        folder = assets_dir()
        if name not in ASSETS or folder is None:  # a fixed list: no path from the request reaches the disk
            return Response(status_code=404)
        return FileResponse(folder / name, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})


def _missing_page(openapi_url: str, what: str) -> HTMLResponse:
    url = html.escape(openapi_url, quote=True)
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>crossrank - API documentation</title></head>"
        f"<body><h1>API documentation</h1><p>{what} is not available: its assets come from the "
        f"<code>{ASSETS_PACKAGE}</code> package, which is not installed here (<code>pip install "
        f"{ASSETS_PACKAGE}</code>; crossrank serves them itself and loads nothing from the internet).</p>"
        f"<p>The OpenAPI document is at <a href='{url}'>{url}</a>.</p></body></html>"
    )
    return HTMLResponse(body, status_code=200)
