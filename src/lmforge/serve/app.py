"""``create_app(models, settings)``: the FastAPI application behind ``lmforge serve``.

Models load in a background thread at start-up (``/health/ready`` answers 503 until they are in). Each route family
is a router in ``serve/routes/``; the app mounts the ones the registered tasks name (``Task.routes``), so a new task
with a new route adds one route file and nothing here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import LmforgeError
from lmforge.serve.errors import (
    InternalErrors,
    internal_error_body,
    is_openai_path,
    openai_error,
    report_internal_error,
)
from lmforge.serve.limits import ApiKeyGate, BodySizeLimit, InFlightLimit, InFlightRequests, RequestMetrics
from lmforge.serve.metrics import ServerMetrics
from lmforge.serve.registry import ModelRegistry, parse_model_specs
from lmforge.serve.settings import ServeSettings

WEB = Path(__file__).parent / "web"
DOCS_ASSETS = Path(__file__).parent / "docs_assets"  # Swagger UI and ReDoc, vendored: the docs work offline
# the docs pages load nothing from elsewhere (ReDoc would fetch its logo from a CDN): the browser enforces it
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")


def _error(request: Request, status: int, detail: str, headers: dict | None = None, extra: dict | None = None,
           param: str | None = None):
    if is_openai_path(request.url.path):
        status = 400 if status == 422 else status  # OpenAI answers invalid requests with 400
        return JSONResponse(openai_error(status, detail, param), status_code=status, headers=headers)
    return JSONResponse({"detail": detail, **(extra or {})}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {message}")
    return "invalid request: " + "; ".join(parts)


def _printable(value):
    """Error details echo what was sent: text that cannot be written as UTF-8 (a lone surrogate from a JSON escape)
    is shown with replacement characters instead of failing the answer."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    return value


@functools.cache
def shell_version() -> str:
    """Names the service worker's cache: lmforge's version and a digest of the web UI's files, so an upgrade (or an
    edited file in a development install) installs a new worker that caches the new files and drops the old ones."""
    digest = hashlib.sha256()
    for path in sorted(p for p in WEB.rglob("*") if p.is_file()):
        digest.update(path.relative_to(WEB).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{__import__('lmforge').__version__}-{digest.hexdigest()[:12]}"


def create_app(models: list[str] | list[tuple[str, Path]], settings: ServeSettings | None = None,
               *, load_in_background: bool = True) -> FastAPI:
    settings = settings or ServeSettings()
    specs = parse_model_specs(models) if models and isinstance(models[0], str) else list(models)  # type: ignore[arg-type]
    metrics = ServerMetrics()
    registry = ModelRegistry(specs, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_in_background:
            threading.Thread(target=registry.load_all, name="lmforge-load", daemon=True).start()
        else:
            registry.load_all()
        yield
        for served in registry.models.values():
            for batcher in (served.batcher, served.generation, served.extra.get("embeddings:batcher")):
                if batcher:
                    await batcher.close()
        registry.shutdown()

    app = FastAPI(
        title="lmforge",
        summary="Task endpoints and an OpenAI-compatible API for lmforge runs",
        version=__import__("lmforge").__version__,
        lifespan=lifespan,
        docs_url=None,  # served below from the package's own assets, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.draining = False
    app.state.in_flight = InFlightRequests()  # what a draining server waits for (serve.run)

    # Starlette's HTTPException, the base of FastAPI's: the router's own 404/405 and FastAPI's 400 for a body it cannot
    # read come in the same shapes as the routes' errors (OpenAI's on the OpenAI-compatible paths)
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None),
                      param=getattr(exc, "param", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        param = ".".join(str(p) for p in first if p != "body") or None
        return _error(request, 422, _describe_validation(exc), extra={"errors": _printable(jsonable_encoder(exc.errors()))},
                      param=param)

    @app.exception_handler(LmforgeError)
    async def lmforge_error(request: Request, exc: LmforgeError):
        return _error(request, 422, exc.render())

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # reached only by an error outside the routes (in a middleware), after which Starlette closes the connection
        request_id = report_internal_error(request.method, request.url.path, exc)
        return JSONResponse(internal_error_body(request.url.path, request_id), status_code=500,
                            headers={"X-Request-ID": request_id})

    app.add_middleware(InternalErrors)  # added first, so it runs last, right outside the routes: see serve.errors

    from lmforge.serve.routes import health, models
    from lmforge.tasks import registry as tasks

    app.include_router(health.router)
    app.include_router(models.router)
    for route in tasks.routes():  # every route some registered task answers: serve/routes/<route>.py
        app.include_router(importlib.import_module(f"lmforge.serve.routes.{route}").router)
    if settings.kb is not None:
        from lmforge.serve.routes import kb

        app.include_router(kb.router)

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} API", swagger_ui_parameters={"validatorUrl": None},
            swagger_js_url=f"{root}/docs-assets/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-assets/swagger-ui/favicon-32x32.png")
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=root + app.openapi_url, title=f"{app.title} API",
                              redoc_js_url=f"{root}/docs-assets/redoc/redoc.standalone.js",
                              redoc_favicon_url=f"{root}/docs-assets/swagger-ui/favicon-32x32.png",
                              with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    # the installable app (PWA): manifest, offline page, and the service worker, which must be served from the root
    # path for its scope to cover the whole UI
    @app.get("/manifest.webmanifest", include_in_schema=False)
    def manifest() -> FileResponse:
        return FileResponse(WEB / "manifest.webmanifest", media_type="application/manifest+json",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/offline.html", include_in_schema=False)
    def offline_page() -> FileResponse:
        return FileResponse(WEB / "offline.html", headers={"Cache-Control": "no-cache"})

    @app.get("/sw.js", include_in_schema=False)
    def service_worker() -> Response:
        script = (WEB / "sw.js").read_text().replace("__LMFORGE_CACHE_VERSION__", shell_version())
        return Response(script, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    # the last added runs first: metrics see every answer; CORS answers preflights and adds its headers to the
    # 401/413/429/503 below; the key is checked before the body is read; admission last, right before the routes
    app.add_middleware(InFlightLimit, max_in_flight=settings.max_in_flight, metrics=metrics,
                       requests=app.state.in_flight)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyGate, api_key=settings.api_key, metrics_public=settings.metrics_public)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
