from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lmforge.serve.deps import Registry
from lmforge.serve.schemas import ErrorResponse

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="the process is up")
async def live() -> dict:  # async: answered on the event loop itself, not queued behind busy worker threads
    return {"status": "ok"}


@router.get("/health/ready", summary="every model is loaded and the server takes requests",
            responses={503: {"model": ErrorResponse, "description": "loading, failed to load, or shutting down"}})
def ready(request: Request, registry: Registry) -> Response:
    if request.app.state.draining:
        return JSONResponse({"detail": "the server is shutting down"}, status_code=503)
    if registry.failed:
        return JSONResponse({"detail": f"models failed to load: {registry.failed}"}, status_code=503)
    if not registry.loaded.is_set():
        loading = [n for n, m in registry.models.items() if m.pipeline is None]
        return JSONResponse({"detail": f"loading models: {', '.join(loading)}"}, status_code=503,
                            headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready", "models": list(registry.models)})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            description="Needs the API key when the server has one, unless it runs with --metrics-public "
                        "(the key is checked by serve.limits.ApiKeyGate, before any route).",
            responses={401: {"model": ErrorResponse, "description": "missing or wrong API key"}})
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
