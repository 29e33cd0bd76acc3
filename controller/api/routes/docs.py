"""The API's interactive docs at /docs with Swagger UI's assets served by the controller from controller/static/swagger
(swagger-ui-dist 5, see VERSION there), not a CDN: edge sites are often offline, and FastAPI's default page is blank
there. Swagger UI 5 reads the OpenAPI 3.1 schema FastAPI writes; the 4.x of the swagger-ui-bundle wheel could not."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from protocol.errors import EdgeError

ASSETS = "/static/swagger/"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def assets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "static" / "swagger"


def router(title: str) -> APIRouter:
    router = APIRouter()

    @router.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - API",
            swagger_js_url=ASSETS + "swagger-ui-bundle.js",
            swagger_css_url=ASSETS + "swagger-ui.css",
            swagger_favicon_url=ASSETS + "favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @router.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(ASSETS + "{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        path = assets_dir() / name
        if "/" in name or name.startswith(".") or path.suffix not in MEDIA_TYPES or not path.is_file():
            raise EdgeError(f"no docs asset {name!r}", code="not_found")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])

    return router
