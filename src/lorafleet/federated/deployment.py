"""Federated runs as separate processes: a server and clients that talk to it over the network, through
Flower's deployment engine (SuperLink, SuperNodes), so a real site runs its client next to its data.

    server  `flower-superlink` on HOST:PORT; lorafleet's Flower App (`write_app`: its ServerApp and ClientApp
            are `apps.server` and `apps.client`) is submitted to it with `flwr run`, the recipe path in the
            run config. The SuperLink starts the ServerApp in a process of its own, which runs the rounds
            and writes `federated.json` (or the error) into the run directory; `serve` waits for that file
            and stops the SuperLink.
    client  `flower-supernode` connected to the server, its node config holding `data-path` (and `name`):
            the SuperNode runs lorafleet's ClientApp on those rows for every round it is sampled in.

Flower 1.42's SuperLink serves its Fleet, Control and runtime APIs on one HTTP port. Connections here are
plain (Flower's `--insecure`): fit for 127.0.0.1 and trusted networks; across sites, put them behind TLS.
Flower never installs packages at run time here (the App lists none, and it is told not to).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorafleet.errors import ConfigError
from lorafleet.federated.server import ERROR_FILE, SUMMARY_FILE, FederatedError, FederatedResult
from lorafleet.training.config import FinetuneConfig

_APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "lorafleet-federated"
version = "1.0.0"
description = "lorafleet's federated LoRA fine-tuning (the code is the installed lorafleet package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "lorafleet"

[tool.flwr.app.components]
serverapp = "lorafleet.federated.apps:server"
clientapp = "lorafleet.federated.apps:client"

[tool.flwr.app.config]
recipe = ""
overrides = ""
"""
_NO_INSTALLS = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def serve(
    recipe: Path,
    config: FinetuneConfig,
    *,
    overrides: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 9092,
    timeout: float | None = None,
    log: Callable[[str], None] = print,
) -> FederatedResult:
    """Start a SuperLink, run `config` (read from `recipe` with `overrides`) on the clients that connect,
    and return the result once the ServerApp has written it; the SuperLink is stopped either way."""
    from lorafleet.federated.apps import read_outcome

    run_dir = config.run_dir()
    with tempfile.TemporaryDirectory(prefix="lorafleet-fl-") as scratch:
        folder = Path(scratch)
        app = write_app(folder / "app")
        flwr_home = folder / "flwr"
        flwr_home.mkdir()
        (flwr_home / "config.toml").write_text(
            '[superlink]\ndefault = "lorafleet"\n\n'
            f'[superlink.lorafleet]\naddress = "{host}:{port}"\ninsecure = true\n'
        )
        env = {**_flower_env(), "FLWR_HOME": str(flwr_home)}
        superlink = _start(
            [_tool("flower-superlink"), "--insecure", "--host", host, "--port", str(port)],
            env,
            folder / "superlink.log",
        )
        try:
            log(
                f"SuperLink listening on {host}:{port}; clients join with: lorafleet fl client --data FILE "
                f"--server {host}:{port}"
            )
            for name in (SUMMARY_FILE, ERROR_FILE):  # an earlier run's outcome is not this one's
                (run_dir / name).unlink(missing_ok=True)
            _submit(app, recipe, overrides or [], env, superlink, folder / "superlink.log")
            outcome = _wait_for_outcome(run_dir, superlink, folder / "superlink.log", timeout, read_outcome)
        finally:
            _stop(superlink)
    if isinstance(outcome, str):
        raise FederatedError(f"the federated run failed: {outcome.splitlines()[0]}")
    return FederatedResult(adapter_dir=Path(outcome["adapter"]), run_dir=run_dir, summary=outcome)


def join(data: Path, *, server: str, port: int = 9094, name: str | None = None) -> None:
    """Become a SuperNode that trains on `data` for the server at `server` (host:port) until it is stopped;
    `port` is this client's own runtime port (one per client on a machine). The process is replaced
    (exec), so stopping it stops the SuperNode and what it started, with nothing left behind."""
    if not data.is_file():
        raise ConfigError(f"--data {data}: no such file; name this client's rows (.jsonl, .csv, .parquet)")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(
            f"--name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    node_config = f'data-path="{data.resolve()}"' + (f' name="{name}"' if name else "")
    tool = _tool("flower-supernode")
    argv = [tool, "--insecure", "--superlink", server, "--port", str(port), "--node-config", node_config]
    sys.stdout.flush()
    os.execve(tool, argv, _flower_env())


def write_app(folder: Path) -> Path:
    """A Flower App directory whose components are lorafleet's apps (what `flwr run` packages)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(_APP_PYPROJECT)
    (folder / "README.md").write_text("lorafleet's federated LoRA run; the code is the lorafleet package.\n")
    return folder


def _submit(
    app: Path, recipe: Path, overrides: list[str], env: dict[str, str], superlink: Any, log_file: Path
) -> None:
    """`flwr run` the App on the SuperLink, retrying while the SuperLink is still starting. The run config
    goes as a TOML file: JSON strings are TOML basic strings, so any path or override survives quoting."""
    run_config = log_file.parent / "run_config.toml"
    run_config.write_text(
        f"recipe = {json.dumps(str(recipe.resolve()))}\noverrides = {json.dumps(chr(10).join(overrides))}\n"
    )
    command = [_tool("flwr"), "run", str(app), "lorafleet", "--run-config", str(run_config)]
    answer = ""
    for _ in range(60):
        if superlink.poll() is not None:
            raise FederatedError(f"the SuperLink exited (code {superlink.returncode}): {_tail(log_file)}")
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode == 0 and "Successfully started run" in done.stdout:
            return
        answer = done.stdout + done.stderr
        time.sleep(1.0)
    raise FederatedError(f"could not submit the run to the SuperLink: {answer[-500:]}")


def _wait_for_outcome(
    run_dir: Path,
    superlink: Any,
    log_file: Path,
    timeout: float | None,
    read_outcome: Callable[[Path], dict[str, Any] | str | None],
) -> dict[str, Any] | str:
    deadline = None if timeout is None else time.monotonic() + timeout
    while (outcome := read_outcome(run_dir)) is None:
        if superlink.poll() is not None:
            raise FederatedError(f"the SuperLink exited (code {superlink.returncode}): {_tail(log_file)}")
        if deadline is not None and time.monotonic() > deadline:
            raise FederatedError(f"the federated run did not finish within {timeout:g} s")
        time.sleep(0.5)
    return outcome


def _start(command: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this module started and the processes it started (its own session)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _flower_env() -> dict[str, str]:
    """The environment of Flower's processes: ours, with this Python's `bin` first on PATH, since the
    SuperLink and SuperNode start their own helpers (`flower-superexec`) by name, and installs off."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **_NO_INSTALLS, "PATH": path}


def _tool(name: str) -> str:
    """A Flower command: beside this Python (the same environment), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} not found: install lorafleet's extra 'federated' (pip install 'lorafleet[federated]')"
        )
    return found


def _tail(path: Path, chars: int = 600) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""
