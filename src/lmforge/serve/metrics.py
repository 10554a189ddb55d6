"""Prometheus metrics (prometheus-client), one registry per app so several apps can live in one process."""

from __future__ import annotations

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
        self.ready = Gauge("lmforge_ready", "1 when every model is loaded and the server is not draining",
                           registry=self.registry)
