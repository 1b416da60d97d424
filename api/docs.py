"""The API's documentation pages, /docs (Swagger UI) and /redoc, served wholly by this server.

FastAPI's default pages load their JavaScript and CSS from a CDN, so on a server without internet they were
blank. These follow FastAPI's recipe for self-hosting the docs' JavaScript and CSS: the same
`get_swagger_ui_html` / `get_redoc_html` pages, pointed at the Swagger UI and ReDoc files that the
`fastapi-offline` package ships, mounted at ASSETS_URL. Nothing on the pages comes from elsewhere (fonts,
favicon and Swagger's validator badge included), and DOCS_CSP has the browser refuse anything that would: ReDoc's
"powered by" logo from its CDN is the one thing it blocks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
# The pages' own inline start-up script and styles, everything else from this server; ReDoc searches in a worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; frame-ancestors 'none'"
)


def _assets_dir() -> Path:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the fastapi-offline package (the docs' Swagger UI and ReDoc files) is not installed")
    return Path(spec.origin).parent / "static"


def install_docs(app: FastAPI) -> None:
    """Add /docs, /redoc and their assets to an app made with `docs_url=None, redoc_url=None`."""
    assert app.docs_url is None and app.redoc_url is None and app.openapi_url is not None
    app.mount(ASSETS_URL, StaticFiles(directory=_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # (behind a proxy that serves the API under a prefix)
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # The validator badge is an image from validator.swagger.io, which would receive the schema's URL.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
