"""`create_app(settings)`: the platform server as one FastAPI app.

    start     open the registry (migrating it) → start the request log's writer (it prunes rows past
              the retention) → load the base model into the engine → start the local job workers
              (threads that supervise training processes) and, with them, the adaptation controller
              (a thread: `rollout.controller`)
    serve     routes per resource under /v1 (OpenAI-compatible inference, files, fine-tuning jobs;
              adapters, usage, feedback, tenants), /healthz, /readyz, /metrics; every route but health
              is authenticated by a bearer key and scoped to its tenant
    stop      stop the controller and the workers (a running job is re-queued) → stop the engine → write
              the request log's last rows → close the registry

`model` in completions is the base model's name, an adapter (`name`: its production alias, else its
latest version), `name@version` or `name:alias`. With the request's `user` (else its API key) it goes
through the router once (`registry.routing.route`: the tenant's canaries and experiments, read for
every request) to an immutable version, whose id is the engine's adapter key: promoting or rolling back
an alias, or changing a split, changes what the next request gets at once, and a request in flight
keeps its version. The response names that version (`system_fingerprint`, `X-Lorafleet-Version`).
Each finished completion is metered (`usage`) and logged (`requests`) with that version and the route's
reason, in one place: `record`, given to the inference service as its `on_usage`.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from lorafleet import __version__
from lorafleet.api.auth import Authenticator
from lorafleet.api.errors import install_error_handlers
from lorafleet.api.metrics import ServerMetrics
from lorafleet.api.openapi import install_openapi
from lorafleet.api.routes import (
    adaptation,
    adapters,
    cards,
    completions,
    evaluation,
    exports,
    feedback,
    files,
    fine_tuning,
    health,
    models,
    splits,
    tenants,
    usage,
)
from lorafleet.api.settings import ServerSettings
from lorafleet.jobs.worker import Worker
from lorafleet.monitoring.requests import RequestLogWriter
from lorafleet.registry import Registry
from lorafleet.registry.tables import LoggedCompletion
from lorafleet.rollout.controller import Controller
from lorafleet.ui import install_ui

if TYPE_CHECKING:
    from lorafleet.api.inference import UsageEvent
    from lorafleet.serving.router import Route

DESCRIPTION = """Fine-tune, version and serve LoRA adapters for many tenants on one base model.

Authenticate with `Authorization: Bearer <key>`: a tenant's API key, or the admin key for `/v1/tenants`
(the admin acts for a tenant by naming it in `X-Lorafleet-Tenant`). Errors use OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`; 429 answers carry `Retry-After`.

A completion's `model` and `user` (else the API key) go through the tenant's canaries and A/B
experiments (`/v1/adapters/{name}/canary`, `/v1/experiments`), sticky per user. The version that served
it is named in the response's `system_fingerprint` (every chunk of a stream too) and in the
`X-Lorafleet-Version` header: `support@3`, or the base model's name.
"""


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The server app for `settings` (default: read from `LORAFLEET_*` environment variables)."""
    settings = settings or ServerSettings()
    registry = Registry(settings.database_url, artifacts_url=settings.artifacts_url)
    request_log = RequestLogWriter(
        registry.requests,
        retention_days=settings.request_log_days,
        scrub_text=settings.scrub_request_log,
    )
    workers: list[tuple[Worker | Controller, threading.Thread]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        request_log.start()
        if settings.serve_models:
            app.state.inference = _inference(settings, registry, app.state.metrics, request_log)
        for index in range(settings.workers):
            worker = Worker(registry, settings.worker)  # its id: host, pid and a random part
            thread = threading.Thread(target=worker.run, name=f"lorafleet-worker-{index}", daemon=True)
            thread.start()
            workers.append((worker, thread))
        if settings.workers and settings.adaptation:
            controller = Controller(
                registry,
                base_model=settings.base_model,
                settings=settings.controller,
                tokenizer=app.state.tokenizer() if app.state.inference is not None else None,
            )
            thread = threading.Thread(target=controller.run, name="lorafleet-controller", daemon=True)
            thread.start()
            workers.append((controller, thread))
        # What startup made (torch, the model, the app) lives as long as the server: out of the collector's
        # sight, a full collection walks only what requests allocate, not a pause of hundreds of ms
        gc.freeze()
        try:
            yield
        finally:
            for loop, _ in workers:
                loop.stop()
            for _, thread in workers:
                thread.join(timeout=60)
            if app.state.inference is not None:
                app.state.inference.close()
            request_log.close()
            registry.close()

    app = FastAPI(title="lorafleet", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.request_log = request_log
    app.state.inference = None
    app.state.started_at = time.time()
    app.state.authenticate = Authenticator(
        registry, admin_key=settings.admin_key, default_per_minute=settings.requests_per_minute
    )
    app.state.tokenizer = functools.cache(lambda: _tokenizer(app, settings))
    app.state.base_skeleton = functools.cache(lambda: _base_skeleton(settings))
    app.state.metrics = ServerMetrics(app.state)
    app.middleware("http")(app.state.metrics.middleware)
    install_error_handlers(app)
    install_openapi(app)
    routes = (
        health,
        tenants,
        files,
        fine_tuning,
        adapters,
        evaluation,
        cards,
        exports,
        adaptation,
        splits,
        models,
        completions,
        feedback,
        usage,
    )
    for module in routes:
        app.include_router(module.router)
    install_ui(app, secret=settings.ui_secret)
    return app


def _inference(
    settings: ServerSettings, registry: Registry, metrics: ServerMetrics, request_log: RequestLogWriter
) -> Any:
    from lorafleet.api.inference import InferenceService

    def route(tenant_id: str, model: str, user: str | None) -> Route:
        """Where the tenant's request for `model` goes for `user`, after the tenant's token quota."""
        registry.usage.check_tokens(tenant_id)
        return registry.routing.route(tenant_id, model, user=user, base_names=[settings.base_model])

    def record(event: UsageEvent) -> None:
        """Meter the finished request and log it (queued: the log is written on its own thread)."""
        request_log.record(_logged(event))
        metrics.count_tokens(event.prompt_tokens, event.completion_tokens)
        registry.usage.record(
            event.tenant_id,
            "inference",
            key_id=event.key_id,
            model=event.model,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            compute_seconds=event.seconds,
        )

    return InferenceService.build(
        settings.base_model,
        registry,
        base_name=settings.base_model,
        route=route,
        on_usage=record,
        max_batch=settings.max_batch,
        max_slots=settings.max_slots,
        queue_size=settings.queue_size,
        device=settings.device,
    )


def _logged(event: UsageEvent) -> LoggedCompletion:
    """The request log's row of a finished request (`UsageEvent`); the engine's adapter key is the
    registry version id that served it (None: the base model), `version` its `name@number`."""
    return LoggedCompletion(
        id=event.response_id,
        tenant_id=event.tenant_id,
        key_id=event.key_id,
        model=event.model,
        adapter_version_id=event.adapter,
        version=event.version,
        route=event.route,
        prompt=event.prompt,
        messages=event.messages,
        text=event.text,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        latency_ms=event.seconds * 1000.0,
        finish_reason=event.finish_reason,
        created_at=time.time(),
    )


def _tokenizer(app: FastAPI, settings: ServerSettings) -> Any:
    if app.state.inference is not None:
        return app.state.inference.engine.tokenizer
    from lorafleet.models import load_tokenizer

    return load_tokenizer(settings.base_model)


def _base_skeleton(settings: ServerSettings) -> Any:
    """The base model's module tree without weights: what job recipes' target modules are checked against."""
    from lorafleet.models import load_skeleton

    return load_skeleton(settings.base_model)
