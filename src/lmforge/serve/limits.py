"""Admission as pure ASGI middleware: the API key (401, checked before the body is read), body size (413), requests in
flight (429 + Retry-After; 503 + Retry-After while draining), and per-route metrics. Pure ASGI (not
BaseHTTPMiddleware) so streaming responses pass through untouched and a client that disconnects mid-stream frees its
slot at once.

Outermost first: RequestMetrics -> (CORS) -> ApiKeyGate -> BodySizeLimit -> InFlightLimit -> the routes."""

from __future__ import annotations

import hmac
import json
import re
import time
from typing import Any

import anyio

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


def bearer_key_matches(authorization: str | None, key: str) -> bool:
    """``Authorization: Bearer KEY`` carries ``key``; constant-time, so a near miss takes as long as a wild guess."""
    scheme, _, token = (authorization or "").partition(" ")
    supplied = token.strip() if scheme.lower() == "bearer" else ""
    return hmac.compare_digest(supplied.encode(), key.encode())


API_KEY_DETAIL = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"


class ApiKeyGate:
    """With an API key, ``/v1/*`` and ``/metrics`` (unless ``metrics_public``) answer 401 without it, before the body
    is read or parsed: a caller without the key learns nothing, not even whether its JSON was valid. Health routes,
    the web UI and the API docs stay open."""

    def __init__(self, app, api_key: str | None, metrics_public: bool = False) -> None:
        self.app, self.api_key, self.metrics_public = app, api_key, metrics_public

    def guarded(self, path: str) -> bool:
        return path.startswith("/v1/") or path == "/v1" or (path == "/metrics" and not self.metrics_public)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or self.api_key is None or not self.guarded(scope["path"]):
            return await self.app(scope, receive, send)
        authorization = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"authorization"),
                             None)
        if not bearer_key_matches(authorization, self.api_key):
            return await _send_json(send, 401, API_KEY_DETAIL, {"WWW-Authenticate": "Bearer"},
                                    error_body(scope["path"], 401, API_KEY_DETAIL))
        await self.app(scope, receive, send)


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


class InFlightRequests:
    """The API requests admitted and not answered yet. The in-flight cap counts them, a draining server waits for them
    to finish, and at the drain deadline ``drop_all`` cancels those still running so the process can stop."""

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.scopes)

    def drop_all(self) -> int:
        """Cancel every request in flight (call it on the event loop); returns how many there were."""
        count = len(self.scopes)
        for cancel_scope in list(self.scopes):
            cancel_scope.cancel()
        self.dropped += count
        return count


class InFlightLimit:
    """Admission to the API routes: a draining server turns new requests away (503 + Retry-After, and closes the
    connection so the client reconnects elsewhere), more than ``max_in_flight`` at once get 429 + Retry-After; health,
    metrics and the UI are never refused. Admission is one step with no await in it, so a request counted in flight
    is served to the end even when SIGTERM arrives a moment later, unless the drain timeout expires first: then it is
    dropped, with a 503 if its response has not started, or by closing the connection mid-stream (the client sees a
    truncated body, never a clean end)."""

    def __init__(self, app, max_in_flight: int, metrics, requests: InFlightRequests | None = None) -> None:
        self.app, self.max_in_flight, self.metrics = app, max_in_flight, metrics
        self.requests = requests if requests is not None else InFlightRequests()

    @property
    def current(self) -> int:
        return len(self.requests)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        app = scope.get("app")
        if app is not None and getattr(app.state, "draining", False):
            detail = "the server is shutting down"
            return await _send_json(send, 503, detail, {"Retry-After": "5", "Connection": "close"},
                                    error_body(scope["path"], 503, detail))
        if self.current >= self.max_in_flight:
            detail = f"server busy: {self.current} requests in flight (limit {self.max_in_flight}); retry shortly"
            return await _send_json(send, 429, detail, {"Retry-After": "1"}, error_body(scope["path"], 429, detail))
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with anyio.CancelScope() as cancel_scope:
            self.requests.scopes.add(cancel_scope)
            self.metrics.in_flight.set(self.current)
            try:
                await self.app(scope, receive, watch)
            finally:
                self.requests.scopes.discard(cancel_scope)
                self.metrics.in_flight.set(self.current)
        if cancel_scope.cancelled_caught and not started:
            detail = "the server shut down before this request finished (drain timeout); retry it"
            await _send_json(send, 503, detail, {"Retry-After": "5", "Connection": "close"},
                             error_body(scope["path"], 503, detail))
        # dropped mid-response: returning without the final body chunk makes the server close the connection


class RequestMetrics:
    def __init__(self, app, metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}
        arrived = dict(scope)  # routing rewrites path and root_path inside mounts: match against the scope as it came

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            path = route_label(scope, arrived)
            self.metrics.requests.labels(scope["method"], path, str(status["code"])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


def route_label(scope: Scope, arrived: Scope | None = None) -> str:
    """The path template of the route that served the request (``/v1/models/{name}``, ``/static``), or of the route
    it would have reached when a middleware answered first (401/413/429/503); ``unmatched`` for unknown paths, so the
    label has as many values as the app has routes, whatever clients send."""
    route = scope.get("route")
    if getattr(route, "path", None):
        return route.path
    from starlette.routing import get_route_path

    arrived = arrived or scope
    app = arrived.get("app")
    table = getattr(getattr(app, "state", None), "route_table", None)
    if table is None:
        table = _route_table(app)
        if app is not None:
            app.state.route_table = table
    path, method = get_route_path(arrived), arrived.get("method", "GET")
    matched = [(template, methods) for regex, template, methods in table if regex.match(path)]
    for template, methods in matched:
        if methods is None or method in methods:
            return template
    return matched[0][0] if matched else "unmatched"  # the path is known, the method is not (405)


def _route_table(app) -> list[tuple[re.Pattern, str, frozenset[str] | None]]:
    """(regex, path template, methods) for every route of the app: its top-level routes and mounts, and every
    operation of its OpenAPI schema (recent FastAPI keeps included routers nested, without a flat path list)."""
    from starlette.routing import Mount, compile_path

    table = []
    for route in getattr(app, "routes", ()):
        path = getattr(route, "path", None)
        if path is None:
            continue
        if isinstance(route, Mount):
            table.append((re.compile("^" + re.escape(path) + "(/.*)?$"), path, None))
        else:
            methods = getattr(route, "methods", None)
            table.append((compile_path(path)[0], path, frozenset(methods) if methods else None))
    try:
        operations = app.openapi().get("paths", {}) if hasattr(app, "openapi") else {}
    except Exception:  # noqa: BLE001  a schema that cannot be built must not break metrics: label by routes only
        operations = {}
    for template, ops in operations.items():
        table.append((compile_path(template)[0], template, frozenset(m.upper() for m in ops)))
    return table
