"""Real HTTP servers for integration tests: uvicorn in a background thread, or a command in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import httpx
import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel picks it); a bound socket avoids the race, if you can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def run_server(app: Any, *, host: str = "127.0.0.1", startup_timeout: float = 10.0) -> Iterator[str]:
    """Serve the ASGI `app` with a real `uvicorn.Server` in a background thread; yield `http://HOST:PORT`.

    The listening socket is bound here first (port 0), so the port is known and nobody can take it.
    On exit the server is asked to stop (`should_exit`) and its thread joined.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit too: uvicorn exits when the app's startup fails
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(
                    f"uvicorn on {host}:{port} stopped before it started ({failure!r}): "
                    "see the uvicorn log for the app's startup error"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn on {host}:{port} did not start within {startup_timeout:g} s")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()
    if thread.is_alive():
        raise RuntimeError(f"uvicorn on {host}:{port} did not stop within 15 s")


def _tail(log: IO[bytes], chars: int = 4000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-chars:]


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within `grace` seconds."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    proc.wait()


@contextmanager
def run_server_process(
    argv: list[str],
    *,
    env: Mapping[str, str] | None,
    ready_url: str,
    timeout: float = 60.0,
    stop_timeout: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `argv` (e.g. `lorafleet serve ...`) in its own process group; yield it once `ready_url` says 200.

    `env` is the child's whole environment, as for `subprocess.Popen` (None inherits ours). Its output goes
    to a temporary file, whose tail is in the error when the process dies or is not ready within `timeout`.
    On exit the group gets SIGTERM, then SIGKILL after `stop_timeout` seconds.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            argv,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            with httpx.Client(timeout=2.0) as client:
                while True:
                    code = proc.poll()
                    if code is not None:
                        raise RuntimeError(
                            f"{argv[0]} exited with {code} before {ready_url} answered:\n{_tail(log)}"
                        )
                    try:
                        if client.get(ready_url).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{ready_url} did not answer 200 within {timeout:g} s; "
                            f"output of {argv[0]}:\n{_tail(log)}"
                        )
                    time.sleep(0.1)
            yield proc
        finally:
            _stop(proc, stop_timeout)
