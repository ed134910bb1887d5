"""Prometheus metrics of one server: HTTP requests and latency, tokens, the engine's queue, the job queue."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response


class ServerMetrics:
    """The server's metrics in their own registry (several apps in one process never clash)."""

    def __init__(self, app_state: Any) -> None:
        self.state = app_state
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lorafleet_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lorafleet_http_request_seconds",
            "Time to the response's start",
            ["route"],
            registry=self.registry,
        )
        self.tokens = Counter("lorafleet_tokens", "Tokens served", ["kind"], registry=self.registry)
        self.engine = Gauge("lorafleet_engine_requests", "Engine requests", ["state"], registry=self.registry)
        self.jobs = Gauge(
            "lorafleet_jobs_active", "Fine-tuning jobs queued or running", registry=self.registry
        )

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        self.requests.labels(request.method, route, str(response.status_code)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)
        return response

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.tokens.labels("prompt").inc(prompt)
        self.tokens.labels("completion").inc(completion)

    def refresh(self) -> None:
        """Read the gauges' current values (called by GET /metrics)."""
        inference = self.state.inference
        if inference is not None:
            stats = inference.engine.stats()
            self.engine.labels("running").set(stats["running"])
            self.engine.labels("waiting").set(stats["waiting"])
        self.jobs.set(self.state.registry.jobs.active_count())
