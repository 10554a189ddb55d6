"""``create_app(models, settings)``: the FastAPI application behind ``lmforge serve``.

Models load in a background thread at start-up (``/health/ready`` answers 503 until they are in); task routes and
the OpenAI-compatible routes are separate routers, so a new task adds a router without reshaping the app.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from lmforge.errors import LmforgeError
from lmforge.serve.errors import is_openai_path, openai_error
from lmforge.serve.limits import BodySizeLimit, InFlightLimit, RequestMetrics
from lmforge.serve.metrics import ServerMetrics
from lmforge.serve.registry import ModelRegistry, parse_model_specs
from lmforge.serve.settings import ServeSettings

WEB = Path(__file__).parent / "web"


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
            if served.batcher:
                await served.batcher.close()
        registry.shutdown()

    app = FastAPI(
        title="lmforge",
        summary="Task endpoints and an OpenAI-compatible API for lmforge runs",
        version=__import__("lmforge").__version__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.draining = False

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None),
                      param=getattr(exc, "param", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        param = ".".join(str(p) for p in first if p != "body") or None
        return _error(request, 422, _describe_validation(exc), extra={"errors": jsonable_encoder(exc.errors())},
                      param=param)

    @app.exception_handler(LmforgeError)
    async def lmforge_error(request: Request, exc: LmforgeError):
        return _error(request, 422, exc.render())

    from lmforge.serve.routes import classify, health, models

    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(classify.router)
    try:
        from lmforge.serve.routes import openai as openai_routes

        app.include_router(openai_routes.router)
    except ImportError:
        pass

    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(InFlightLimit, max_in_flight=settings.max_in_flight, metrics=metrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
