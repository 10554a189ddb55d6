"""FastAPI dependencies: API key, readiness, model lookup (``Annotated`` so routes stay declarative)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from lmforge.serve.registry import ModelRegistry, ServedModel
from lmforge.serve.settings import ServeSettings


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def require_api_key(
    settings: Annotated[ServeSettings, Depends(get_settings)],
    authorization: Annotated[str | None, Header(description="Bearer API key, when the server has one")] = None,
) -> None:
    if settings.api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    supplied = token.strip() if scheme.lower() == "bearer" else ""
    # constant-time: the comparison takes as long for a near miss as for a wild guess
    if not hmac.compare_digest(supplied.encode(), settings.api_key.encode()):
        raise HTTPException(
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_ready(registry: Annotated[ModelRegistry, Depends(get_registry)]) -> None:
    # a draining server is turned away at admission (serve.limits.InFlightLimit), so an admitted request finishes
    if registry.failed:
        raise HTTPException(503, f"models failed to load: {registry.failed}")
    if not registry.loaded.is_set():
        raise HTTPException(503, "models are still loading; retry shortly", headers={"Retry-After": "2"})


def find_model(registry: ModelRegistry, name: str | None, task: str | tuple[str, ...]) -> ServedModel:
    tasks = (task,) if isinstance(task, str) else task
    wanted = name or next((n for n, m in registry.models.items() if m.task in tasks), registry.default)
    served = registry.models.get(wanted) if wanted else None
    if served is None:
        raise HTTPException(404, f"model '{name}' not found; loaded: {', '.join(registry.models) or 'none'}")
    if served.task not in tasks:
        raise HTTPException(
            422, f"model '{served.name}' is a {served.task} model; this route needs a {' or '.join(tasks)} model"
        )
    return served


ApiKey = Depends(require_api_key)
Ready = Depends(require_ready)
Registry = Annotated[ModelRegistry, Depends(get_registry)]
Settings = Annotated[ServeSettings, Depends(get_settings)]
