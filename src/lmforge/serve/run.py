"""Run the app under uvicorn with a graceful shutdown: on SIGTERM readiness turns 503, optionally for a drain
delay, then the listener closes and in-flight requests finish before the process exits."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import uvicorn

from lmforge.serve.app import create_app
from lmforge.serve.settings import ServeSettings

log = logging.getLogger("lmforge")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app, on_started: Callable[[str], None] | None = None) -> None:
        super().__init__(config)
        self.lmforge_app = app
        self.on_started = on_started

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.lmforge_app.state.url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
            if self.on_started:
                self.on_started(self.lmforge_app.state.url)

    def handle_exit(self, sig, frame) -> None:
        app = self.lmforge_app
        first = not app.state.draining
        app.state.draining = True
        app.state.metrics.ready.set(0)
        delay = app.state.settings.shutdown_delay_s
        if first and delay > 0:
            log.info("draining for %.1fs before shutting down", delay)
            threading.Timer(delay, self._exit, (sig, frame)).start()
        else:
            self._exit(sig, frame)

    def _exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutting down; a drained, graceful stop exits with status 0
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig in captured and not self.force_exit:
            captured.remove(sig)


def serve(models: list[str], settings: ServeSettings, on_started: Callable[[str], None] | None = None) -> None:
    app = create_app(models, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            timeout_graceful_shutdown=30, access_log=False)
    GracefulServer(config, app, on_started).run()
