"""Run the app under uvicorn with a graceful drain on SIGTERM (or Ctrl+C).

On the first signal the server starts draining: ``/health/ready`` turns 503 and new API requests are answered 503 +
Retry-After at admission (``serve.limits.InFlightLimit``), while the listener stays open so clients get that answer
instead of a refused connection. The process stops once the shutdown delay (``--shutdown-delay``, a minimum) has
passed and no API request is in flight. Requests still running ``--drain-timeout`` seconds after the shutdown delay
are dropped; the process then exits with status ``EXIT_DROPPED`` (3) instead of 0, so a supervisor can tell a
clean stop from one that cut requests off. A second signal drops the requests in flight at once; a third skips the
rest of the clean-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import uvicorn

from lmforge.serve.app import create_app
from lmforge.serve.settings import ServeSettings

log = logging.getLogger("lmforge")

EXIT_DROPPED = 3  # the drain timeout expired (or a second signal came) with requests still in flight
UNWIND_S = 2.0  # after dropping requests: time for them to answer 503 / close their streams before the loop stops


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app, on_started: Callable[[str], None] | None = None) -> None:
        super().__init__(config)
        self.lmforge_app = app
        self.on_started = on_started
        self.signals = 0
        self.drain_started: float | None = None
        self.drop_now = False

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.lmforge_app.state.url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
            if self.on_started:
                self.on_started(self.lmforge_app.state.url)

    @property
    def dropped(self) -> int:
        return self.lmforge_app.state.in_flight.dropped

    def handle_exit(self, sig, frame) -> None:
        # runs in the signal handler, between two bytecodes of the event loop: set flags only, on_tick acts on them
        self.signals += 1
        app = self.lmforge_app
        if self.signals == 1:
            app.state.draining = True
            app.state.metrics.ready.set(0)
            self.drain_started = time.monotonic()
            settings = app.state.settings
            log.info("draining: %d request(s) in flight, up to %.1fs (+ %.1fs shutdown delay)",
                     len(app.state.in_flight), settings.drain_timeout_s, settings.shutdown_delay_s)
        elif self.signals == 2:
            self.drop_now = True
        else:
            self.force_exit = True  # uvicorn stops waiting for connections and skips the lifespan shutdown
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            self._drain_step(time.monotonic() - self.drain_started)
        return await super().on_tick(counter)

    def _drain_step(self, elapsed: float) -> None:
        settings = self.lmforge_app.state.settings
        in_flight = self.lmforge_app.state.in_flight
        if elapsed < settings.shutdown_delay_s and not self.drop_now:
            return
        if not len(in_flight):
            self.config.timeout_graceful_shutdown = max(UNWIND_S, settings.shutdown_delay_s
                                                        + settings.drain_timeout_s - elapsed)
            self.should_exit = True
        elif self.drop_now or elapsed >= settings.shutdown_delay_s + settings.drain_timeout_s:
            count = in_flight.drop_all()
            log.warning("dropped %d request(s) still in flight %s; exiting with status %d", count,
                        "on a second signal" if self.drop_now else
                        f"after the {settings.drain_timeout_s:g}s drain timeout (--drain-timeout)", EXIT_DROPPED)
            self.config.timeout_graceful_shutdown = UNWIND_S
            self.should_exit = True


def serve(models: list[str], settings: ServeSettings, on_started: Callable[[str], None] | None = None) -> None:
    """Serve until a signal; raises ``SystemExit(EXIT_DROPPED)`` if the drain had to drop requests."""
    app = create_app(models, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            timeout_graceful_shutdown=settings.drain_timeout_s + settings.shutdown_delay_s,
                            access_log=False)
    server = GracefulServer(config, app, on_started)
    server.run()
    if server.dropped:
        raise SystemExit(EXIT_DROPPED)
