"""Request limits as pure ASGI middleware: body size (413), requests in flight (429 + Retry-After), and per-route
metrics. Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched and a client that
disconnects mid-stream frees its slot at once."""

from __future__ import annotations

import json
import time
from typing import Any

Scope = dict[str, Any]


async def _send_json(send, status: int, detail: str, headers: dict[str, str] | None = None, body: dict | None = None) -> None:
    payload = json.dumps(body or {"detail": detail}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def error_body(path: str, status: int, detail: str) -> dict:
    """The OpenAI-compatible routes answer errors in OpenAI's shape; the rest with ``{"detail": ...}``."""
    from lmforge.serve.errors import is_openai_path, openai_error

    return openai_error(status, detail) if is_openai_path(path) else {"detail": detail}


class BodySizeLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = f"request body is larger than {self.max_bytes:,} bytes; send fewer or shorter inputs"
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, too_big, body=error_body(scope["path"], 413, too_big))
        # read (at most max_bytes + 1) up front, then replay it: chunked bodies are bounded too
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_json(send, 413, too_big, body=error_body(scope["path"], 413, too_big))
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class InFlightLimit:
    """Admission to the API routes: a draining server turns new requests away (503), more than ``max_in_flight`` at
    once get 429 + Retry-After; health, metrics and the UI are never refused. Admission is one step with no await in
    it, so a request counted in flight is always served to the end, even when SIGTERM arrives a moment later."""

    def __init__(self, app, max_in_flight: int, metrics) -> None:
        self.app, self.max_in_flight, self.metrics = app, max_in_flight, metrics
        self.current = 0

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        app = scope.get("app")
        if app is not None and getattr(app.state, "draining", False):
            detail = "the server is shutting down"
            return await _send_json(send, 503, detail, {"Retry-After": "5"}, error_body(scope["path"], 503, detail))
        if self.current >= self.max_in_flight:
            detail = f"server busy: {self.current} requests in flight (limit {self.max_in_flight}); retry shortly"
            return await _send_json(send, 429, detail, {"Retry-After": "1"}, error_body(scope["path"], 429, detail))
        self.current += 1
        self.metrics.in_flight.set(self.current)
        try:
            await self.app(scope, receive, send)
        finally:
            self.current -= 1
            self.metrics.in_flight.set(self.current)


class RequestMetrics:
    def __init__(self, app, metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static") else "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status["code"])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
