"""FastAPI dependencies: API key, readiness, model lookup (``Annotated`` so routes stay declarative)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from lmforge.serve.limits import API_KEY_DETAIL, bearer_key_matches
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
    # serve.limits.ApiKeyGate checks the key first, before the body is read; this dependency documents the header
    # in the OpenAPI schema and keeps a router mounted elsewhere guarded too
    if settings.api_key is None:
        return
    if not bearer_key_matches(authorization, settings.api_key):  # constant-time
        raise HTTPException(401, API_KEY_DETAIL, headers={"WWW-Authenticate": "Bearer"})


def require_ready(registry: Annotated[ModelRegistry, Depends(get_registry)]) -> None:
    # a draining server is turned away at admission (serve.limits.InFlightLimit), so an admitted request finishes
    if registry.failed:
        raise HTTPException(503, f"models failed to load: {registry.failed}")
    if not registry.loaded.is_set():
        raise HTTPException(503, "models are still loading; retry shortly", headers={"Retry-After": "2"})


def find_model(registry: ModelRegistry, name: str | None, route: str) -> ServedModel:
    """The model a request names (or the first one this route answers), if this route answers it."""
    wanted = name or next((n for n, m in registry.models.items() if route in m.routes), registry.default)
    served = registry.models.get(wanted) if wanted else None
    if served is None:
        raise HTTPException(404, f"model '{name}' not found; loaded: {', '.join(registry.models) or 'none'}")
    if route not in served.routes:
        answering = [n for n, m in registry.models.items() if route in m.routes]
        raise HTTPException(
            422, f"model '{served.name}' is a {served.task} model, which this route does not serve"
            + (f"; models it serves: {', '.join(answering)}" if answering else "")
        )
    return served


ApiKey = Depends(require_api_key)
Ready = Depends(require_ready)
Registry = Annotated[ModelRegistry, Depends(get_registry)]
Settings = Annotated[ServeSettings, Depends(get_settings)]


def check_batch(count: int, settings, empty: str) -> None:
    """A request's number of inputs against the server's limit (422 saying what to send instead)."""
    if not count:
        raise HTTPException(422, f"inputs is empty: {empty}")
    if count > settings.max_batch_inputs:
        raise HTTPException(422, f"{count} inputs in one request; the limit is {settings.max_batch_inputs}: "
                                 "split them over several requests")


def check_text(text: str, label: str, settings) -> None:
    """One text of a request against the server's limits; ``label`` names it in the 422 ("input 3", "input 3: the
    question")."""
    if not text.strip():
        raise HTTPException(422, f"{label} is empty")
    if len(text) > settings.max_input_chars:
        raise HTTPException(422, f"{label} has {len(text):,} characters; the limit is {settings.max_input_chars:,}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape ("\ud800") is valid JSON but no text
        raise HTTPException(422, f"{label} is not valid Unicode text") from None


def request_texts(inputs: str | list[str], settings) -> list[str]:
    """The texts of a classify/translate/summarize request, checked against the server's limits (422 naming the
    input that breaks one)."""
    texts = [inputs] if isinstance(inputs, str) else inputs
    check_batch(len(texts), settings, "send a text or a list of texts")
    for i, text in enumerate(texts):
        check_text(text, f"input {i}", settings)
    return texts
