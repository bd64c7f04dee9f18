"""The HTML pages: the storefront demo, the operator's dashboard, and the API docs (Swagger UI, ReDoc).

None is in the OpenAPI document. The docs pages' scripts and styles are the `fastapi-offline` wheel's files,
served from the installation (`create_app` mounts `DOCS_ASSETS` at /docs-assets): they work without internet.
"""

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

STATIC = Path(__file__).parent.parent / "static"
# Swagger UI's and ReDoc's files as the `fastapi-offline` wheel ships them: the docs pages work without internet.
_OFFLINE = importlib.util.find_spec("fastapi_offline")
assert _OFFLINE is not None and _OFFLINE.origin is not None  # a dependency, installed as files
DOCS_ASSETS = Path(_OFFLINE.origin).parent / "static"
# The docs pages may load nothing from elsewhere (their inline bootstrap scripts and styles aside).
SAME_ORIGIN_ONLY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; font-src 'self' data:"
)
# Where each docs page loads its files from (all below /docs-assets).
SWAGGER_FILES = {
    "swagger_js_url": "/docs-assets/swagger-ui-bundle.js",
    "swagger_css_url": "/docs-assets/swagger-ui.css",
    "swagger_favicon_url": "/docs-assets/favicon.png",
}
REDOC_FILES = {
    "redoc_js_url": "/docs-assets/redoc.standalone.js",
    "redoc_favicon_url": "/docs-assets/favicon.png",
    "with_google_fonts": False,
}

router = APIRouter(include_in_schema=False)


@router.get("/dashboard")
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


@functools.cache
def _redoc_js() -> str:
    # ReDoc's bundle shows a logo from its CDN in the sidebar, unconditionally; ours points it at the favicon.
    bundle = (DOCS_ASSETS / "redoc.standalone.js").read_text(encoding="utf-8")
    return bundle.replace("https://cdn.redoc.ly/redoc/logo-mini.svg", "/docs-assets/favicon.png")


# Before the /docs-assets mount (added after the routers), which would otherwise serve the bundle unchanged.
@router.get("/docs-assets/redoc.standalone.js")
def redoc_bundle() -> Response:
    return Response(_redoc_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return _docs_page(get_swagger_ui_html, request, "API docs", SWAGGER_FILES)


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return _docs_page(get_redoc_html, request, "ReDoc", REDOC_FILES)


def _docs_page(render: Callable[..., HTMLResponse], request: Request, name: str, files: dict[str, Any]) -> HTMLResponse:
    app = request.app
    assert app.openapi_url is not None  # the default, /openapi.json
    page = render(openapi_url=app.openapi_url, title=f"{app.title} - {name}", **files)
    page.headers["Content-Security-Policy"] = SAME_ORIGIN_ONLY
    return page


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/storefront")


@router.get("/storefront")
def storefront() -> FileResponse:
    return FileResponse(STATIC / "storefront.html", media_type="text/html")
