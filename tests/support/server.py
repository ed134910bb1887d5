"""Real HTTP servers for integration tests: uvicorn in a background thread, or a command in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ServerCommand:
    """A server to start: its command line, its whole environment (None inherits ours), the URL that
    answers 200 once it is ready."""

    argv: list[str]
    env: Mapping[str, str] | None
    ready_url: str


@contextmanager
def run_server_processes(
    commands: Sequence[ServerCommand], *, timeout: float = 60.0, stop_timeout: float = 10.0
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start every command at once, each in its own process group (their startups overlap); yield the
    processes once every `ready_url` said 200, all within `timeout` seconds.

    Each one's output goes to a temporary file, whose tail is in the error when it dies or is not ready
    in time. On exit every group gets SIGTERM, then SIGKILL after `stop_timeout` seconds.
    """
    with ExitStack() as stack:
        started = []
        for command in commands:
            log = stack.enter_context(tempfile.TemporaryFile())
            proc = subprocess.Popen(
                command.argv,
                env=None if command.env is None else dict(command.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            stack.callback(_stop, proc, stop_timeout)
            started.append((command, proc, log))
        deadline = time.monotonic() + timeout
        for command, proc, log in started:
            _wait_until_ready(command, proc, log, deadline, timeout)
        yield [proc for _, proc, _ in started]


@contextmanager
def run_server_process(
    argv: list[str],
    *,
    env: Mapping[str, str] | None,
    ready_url: str,
    timeout: float = 60.0,
    stop_timeout: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `argv` (e.g. `lorafleet serve ...`) and yield it once `ready_url` says 200
    (`run_server_processes` with one command)."""
    command = ServerCommand(argv, env, ready_url)
    with run_server_processes([command], timeout=timeout, stop_timeout=stop_timeout) as [proc]:
        yield proc


def _wait_until_ready(
    command: ServerCommand, proc: subprocess.Popen[bytes], log: IO[bytes], deadline: float, timeout: float
) -> None:
    """Poll `command.ready_url` until it answers 200; an error with the output if the process exits first
    or `deadline` passes."""
    name = command.argv[0]
    with httpx.Client(timeout=2.0) as client:
        while True:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{name} exited with {code} before {command.ready_url} answered:\n{_tail(log)}"
                )
            try:
                if client.get(command.ready_url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{command.ready_url} did not answer 200 within {timeout:g} s; "
                    f"output of {name}:\n{_tail(log)}"
                )
            time.sleep(0.1)
