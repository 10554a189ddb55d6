"""Error bodies: ``{"detail": ...}`` on lmforge's routes, OpenAI's ``{"error": {...}}`` on the OpenAI-compatible ones."""

from __future__ import annotations

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions")
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


def is_openai_path(path: str) -> bool:
    return path in OPENAI_PATHS


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code or {404: "model_not_found", 401: "invalid_api_key"}.get(status)}}
