"""Error bodies: ``{"detail": ...}`` on lmforge's routes, OpenAI's ``{"error": {...}}`` on the OpenAI-compatible ones;
unexpected errors are logged under a request id that the 500 body quotes."""

from __future__ import annotations

import json
import logging
import uuid

log = logging.getLogger("lmforge")

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error"}


def is_openai_path(path: str) -> bool:
    return path in OPENAI_PATHS


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code or {404: "model_not_found", 401: "invalid_api_key"}.get(status)}}


def report_internal_error(method: str, path: str, exc: BaseException) -> str:
    """Log an unexpected error with its traceback under a fresh request id, and return the id for the client to quote
    (the body names the id, never the exception: internals stay in the log)."""
    request_id = uuid.uuid4().hex
    log.error("internal error on %s %s (request id %s)", method, path, request_id, exc_info=exc)
    return request_id


def internal_error_body(path: str, request_id: str) -> dict:
    detail = f"internal error; request id {request_id}"
    return openai_error(500, detail) if is_openai_path(path) else {"detail": detail, "request_id": request_id}


class InternalErrors:
    """The catch-all, as pure ASGI middleware right outside the routes: an unexpected exception is logged and answered
    with a JSON 500 naming a request id, and goes no further. (Starlette's ``exception_handler(Exception)`` runs in
    ServerErrorMiddleware, which answers and then re-raises, so uvicorn closes the keep-alive connection under the
    client; its ExceptionMiddleware takes no handler for ``Exception`` itself.)"""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:  # half a response is out: nothing valid can follow, so the server must close the connection
                raise
            request_id = report_internal_error(scope["method"], scope["path"], exc)
            body = json.dumps(internal_error_body(scope["path"], request_id)).encode()
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": body})
