"""Prometheus metrics of one server: HTTP requests and latency, tokens, the engine's queue, the job queue,
and the monitor of every alias under an adaptation policy (as the controller saw it last)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response

from lorafleet.registry.tables import ROLLOUT_ACTIVE

# What each watched alias's monitor shows (the controller's status keys), as gauges lorafleet_alias_<key>
MONITOR_FIGURES = {
    "requests": "Requests its version served since the controller started watching it",
    "windows_tested": "Windows of prompts tested for input drift",
    "windows_drifted": "Windows of prompts found drifted (MMD p-value below the policy's)",
    "drift_p_value": "MMD permutation p-value of the last window against the version's training prompts",
    "drift_auc": "Held-out AUC of a classifier telling the last window from the training prompts",
    "quality": "Mean feedback score of the last scored requests",
    "valid_rate": "Share of the last answers the policy's validator accepted",
    "error_rate": "Share of the last requests that failed",
    "latency_p50_ms": "Median latency of the last successful requests, ms",
    "latency_p95_ms": "95th percentile latency of the last successful requests, ms",
    "rollout_active": "1 while a rollout (waiting, training, canary) is under way",
}


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
        self.monitors = {
            figure: Gauge(
                f"lorafleet_alias_{figure}", text, ["tenant", "adapter", "alias"], registry=self.registry
            )
            for figure, text in MONITOR_FIGURES.items()
        }

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
        for gauge in self.monitors.values():
            gauge.clear()  # an alias no longer watched drops out
        for watched in self.state.registry.adaptation.watched():
            status = watched.status or {}
            for figure, gauge in self.monitors.items():
                value = (
                    (status.get("state") in ROLLOUT_ACTIVE)
                    if figure == "rollout_active"
                    else status.get(figure)
                )
                if value is not None:
                    gauge.labels(watched.tenant_id, watched.adapter, watched.alias).set(float(value))
