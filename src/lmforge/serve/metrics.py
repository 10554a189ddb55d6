"""Prometheus metrics (prometheus-client), one registry per app so several apps can live in one process."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmforge_requests_total", "HTTP requests by route and status", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lmforge_request_latency_seconds", "request latency by route", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.batch_size = Histogram(
            "lmforge_batch_size", "inputs per forward pass (after micro-batching)", ["model"], registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.in_flight = Gauge("lmforge_in_flight_requests", "requests being served", registry=self.registry)
        self.generated_tokens = Counter(
            "lmforge_generated_tokens_total", "tokens generated", ["model"], registry=self.registry
        )
        # the generation scheduler's, named as vLLM's where they mean the same (vllm:num_requests_running, ...)
        label = ["model_name"]
        self.running = Gauge("lmforge:num_requests_running", "sequences in the decoding batch (reading their prompt "
                             "or generating)", label, registry=self.registry)
        self.waiting = Gauge("lmforge:num_requests_waiting", "sequences waiting for a row of the batch", label,
                             registry=self.registry)
        self.ttft = Histogram("lmforge:time_to_first_token_seconds", "from arrival to the first generated token",
                              label, registry=self.registry,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 20, 40))
        self.itl = Histogram("lmforge:inter_token_latency_seconds", "between two tokens of one sequence", label,
                             registry=self.registry,
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5))
        self.prompt_tokens = Counter("lmforge:prompt_tokens", "prompt tokens read", label, registry=self.registry)
        self.generation_tokens = Counter("lmforge:generation_tokens", "tokens generated", label,
                                         registry=self.registry)
        self.tokens_per_second = Gauge("lmforge:generation_tokens_per_second", "tokens generated per second over "
                                       "the last 10 seconds, all sequences together", label, registry=self.registry)
        self.ready = Gauge("lmforge_ready", "1 when every model is loaded and the server is not draining",
                           registry=self.registry)


class GenerationObserver:
    """The scheduler's reports (lmforge.inference.continuous.Observer) as one model's metrics."""

    WINDOW = 10.0

    def __init__(self, metrics: ServerMetrics, model: str) -> None:
        self.m, self.model = metrics, model
        self._steps: deque[tuple[float, int]] = deque()  # (time, rows decoded) in the last WINDOW seconds
        self._decoded = 0  # rows decoded over those steps

    def queue(self, waiting: int, running: int) -> None:
        self.m.waiting.labels(self.model).set(waiting)
        self.m.running.labels(self.model).set(running)

    def first_token(self, seconds: float) -> None:
        self.m.ttft.labels(self.model).observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.m.itl.labels(self.model).observe(seconds)

    def tokens(self, prompt: int, generated: int) -> None:
        self.m.prompt_tokens.labels(self.model).inc(prompt)
        self.m.generation_tokens.labels(self.model).inc(generated)

    def step(self, rows: int) -> None:
        now = time.monotonic()
        self._steps.append((now, rows))
        self._decoded += rows
        while self._steps[0][0] < now - self.WINDOW:
            self._decoded -= self._steps.popleft()[1]
        span = max(now - self._steps[0][0], 1.0)
        self.m.tokens_per_second.labels(self.model).set(self._decoded / span)
        self.m.batch_size.labels(self.model).observe(rows)
