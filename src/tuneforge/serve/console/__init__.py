"""The web console at `/` and the API docs at `/docs` and `/redoc`, served from the package itself.

The console is a few ES modules and a stylesheet (`static/`) that call the public `/v1` API with the key the user
signs in with — nothing it does is out of reach of a client. Third-party assets (uPlot for the charts, Swagger UI
and ReDoc for the docs) come from npm and are vendored by `make console` into `static/vendor/`: the pages load
nothing from another origin, so they work on a machine without internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
VENDOR = "/console/vendor"
# Everything from this origin: scripts, styles, API calls. Inline styles are allowed for the chart library, which
# positions its elements through style attributes.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def console() -> FileResponse:
    # no-cache: a new version of the server is picked up on the next load (the modules revalidate by ETag)
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/docs")
def swagger(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} — API",
        swagger_js_url=f"{VENDOR}/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui.css",
        swagger_favicon_url=f"{VENDOR}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # the validator badge would call validator.swagger.io
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} — API",
        redoc_js_url=f"{VENDOR}/redoc.standalone.js",
        redoc_favicon_url=f"{VENDOR}/favicon-32x32.png",
        with_google_fonts=False,
    )


class _Static(StaticFiles):
    """The console's files, revalidated on each load (ETag), so an upgraded server never runs old modules."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/console", _Static(directory=STATIC), name="console")
