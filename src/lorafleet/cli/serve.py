"""`lorafleet serve` (the platform server) and `lorafleet worker` (job workers without a server)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from lorafleet.errors import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

# The option that sets each settings field (dotted for nested ones), to name it in errors.
OPTION_OF = {
    "base_model": "--model",
    "workers": "--workers",
    "database_url": "--database-url",
    "artifacts_url": "--artifacts-url",
    "admin_key": "--admin-key",
    "max_batch": "--max-batch",
    "queue_size": "--queue-size",
    "worker.executor": "--executor",
    "worker.ray_address": "--ray-address",
    "executor": "--executor",
    "ray_address": "--ray-address",
    "poll_seconds": "--poll-seconds",
    "lease_seconds": "--lease-seconds",
}
SECRET_FIELDS = ("admin_key",)  # never echoed back in an error

ExecutorOpt = Annotated[
    str | None, typer.Option("--executor", help="Where training runs: local (processes here) or ray.")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster address for --executor ray (unset: local Ray)."),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="LORAFLEET_DATABASE_URL",
        help="Registry database (default: SQLite in $LORAFLEET_HOME).",
    ),
]
ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts-url",
        envvar="LORAFLEET_ARTIFACTS_URL",
        help="Where files and adapters are stored: a directory or fsspec URL (default: in $LORAFLEET_HOME).",
    ),
]


def serve(
    host: Annotated[
        str, typer.Option("--host", help="Interface to listen on (0.0.0.0: every one).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Base model served and fine-tuned: 'default', a HF dir, a .gguf."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Job workers started with the server (0: none; default 1)."),
    ] = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    database_url: DatabaseOpt = None,
    artifacts_url: ArtifactsOpt = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            "--admin-key",
            envvar="LORAFLEET_ADMIN_KEY",
            help="Bearer key of the admin routes (tenants, keys, quotas), 16+ characters; unset: refused.",
        ),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="Requests decoded together (default 32).")
    ] = None,
    queue_size: Annotated[
        int | None, typer.Option("--queue-size", help="Requests that may wait before 429s (default 256).")
    ] = None,
    no_models: Annotated[
        bool, typer.Option("--no-models", help="Serve the API without loading a model (no completions).")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help=f"One of {', '.join(LOG_LEVELS)}.")] = "info",
) -> None:
    """Run the platform server: OpenAI-compatible completions, fine-tuning jobs, adapters, tenants, usage."""
    import uvicorn

    from lorafleet.api.app import create_app
    from lorafleet.api.settings import ServerSettings

    if log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level {log_level!r}: choose one of {', '.join(LOG_LEVELS)}")
    worker_options = _given(executor=executor, ray_address=ray_address)
    options = _given(
        base_model=model,
        workers=workers,
        database_url=database_url,
        artifacts_url=artifacts_url,
        admin_key=admin_key,
        max_batch=max_batch,
        queue_size=queue_size,
        serve_models=False if no_models else None,
        worker=worker_options or None,
    )
    settings = _settings(ServerSettings, options)
    app = create_app(settings)
    address = f"http://{host}:{port}"
    typer.echo(f"lorafleet serving {settings.base_model if settings.serve_models else 'the API (no models)'}")
    typer.echo(f"  API:       {address}/v1  (docs: {address}/docs)")
    typer.echo(f"  dashboard: {address}/ui")
    typer.echo(f"  workers:   {settings.workers} ({settings.worker.executor})")
    if settings.admin_key is None:
        typer.echo("  admin key: none; tenant routes refuse (set --admin-key or LORAFLEET_ADMIN_KEY)")
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower())


def worker(
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Jobs run at once (one thread each).")
    ] = 1,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    database_url: DatabaseOpt = None,
    artifacts_url: ArtifactsOpt = None,
    poll_seconds: Annotated[
        float | None,
        typer.Option("--poll-seconds", help="Sleep between looks at an empty queue (default 1)."),
    ] = None,
    lease_seconds: Annotated[
        float | None,
        typer.Option(
            "--lease-seconds", help="A running job without a heartbeat this long is re-queued (default 30)."
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Base model of the server (what the controller's jobs fine-tune)."
        ),
    ] = "default",
    adapt: Annotated[
        bool,
        typer.Option(
            "--adapt/--no-adapt",
            help="Also run the adaptation controller: aliases under an adaptation policy are watched, "
            "retrained, canaried and promoted or rolled back (run it in one process only).",
        ),
    ] = True,
) -> None:
    """Run queued fine-tuning jobs until Ctrl-C or SIGTERM (a job running then goes back to the queue), and
    the adaptation controller (unless --no-adapt)."""
    from lorafleet.jobs.worker import Worker, WorkerSettings
    from lorafleet.registry import Registry
    from lorafleet.rollout.controller import Controller

    options = _given(
        executor=executor,
        ray_address=ray_address,
        poll_seconds=poll_seconds,
        lease_seconds=lease_seconds,
    )
    settings = _settings(WorkerSettings, options)
    registry = Registry(database_url, artifacts_url=artifacts_url)
    stop = threading.Event()
    pool: list[Worker | Controller] = [Worker(registry, settings, say=typer.echo) for _ in range(workers)]
    if adapt:
        pool.append(Controller(registry, base_model=model, say=typer.echo))
    threads = [
        threading.Thread(target=w.run, name=f"lorafleet-worker-{i}", daemon=True) for i, w in enumerate(pool)
    ]
    try:
        with _stop_on_signals(stop):
            for thread in threads:
                thread.start()
            typer.echo(
                f"lorafleet worker: {workers} × {settings.executor} on {registry.db.engine.url!r}"
                f"{', with the adaptation controller' if adapt else ''}; waiting for jobs (Ctrl-C stops)"
            )
            while not stop.wait(0.5) and any(t.is_alive() for t in threads):
                pass
            typer.echo("stopping: a job still running goes back to the queue (again to abort at once)")
            for w in pool:
                w.stop()
            for thread in threads:
                thread.join()
    finally:
        registry.close()
    typer.echo("stopped")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` while inside; a second one aborts at once (KeyboardInterrupt).

    Signals can only be caught on the main thread; elsewhere nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _given(**values: Any) -> dict[str, Any]:
    """The options that were given (not None)."""
    return {key: value for key, value in values.items() if value is not None}


def _settings(model: Any, values: dict[str, Any]) -> Any:
    """`model(**values)`, or `ConfigError` naming each bad option (or environment variable)."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            field = ".".join(str(part) for part in item["loc"])
            where = OPTION_OF.get(field) or "LORAFLEET_" + field.replace(".", "__").upper()
            got = "" if field.split(".")[-1] in SECRET_FIELDS else f" (got {item.get('input')!r})"
            problems.append(f"{where}: {item['msg']}{got}")
        raise ConfigError("; ".join(problems)) from None
