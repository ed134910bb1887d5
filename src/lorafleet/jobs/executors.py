"""Executors start a job process (`lorafleet.jobs.runner`) and hand back a handle to watch, cancel or kill it.

    LocalExecutor   a subprocess on this machine, in its own process group; output in workdir/runner.log
    RayExecutor     a Ray task that calls `run_spec` in a Ray worker (a local Ray, or a cluster by address)

Either way the job reports through the events file named in its spec, and its exit code (see
`lorafleet.jobs.runner`) says how it ended; a negative code means it was killed by that signal.
`cancel()` asks the job to checkpoint and stop (exit 3); `kill()` stops it at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from lorafleet.errors import ConfigError
from lorafleet.jobs.runner import EXIT_CANCELLED, EXIT_FAILED, PARENT_PID_ENV, cancel_request_file

RUNNER_LOG = "runner.log"


class RunningJob(Protocol):
    """A started job process."""

    def poll(self) -> int | None:
        """The exit code once the job has finished, else None (never blocks)."""
        ...

    def cancel(self) -> None:
        """Ask the job to stop gracefully: it checkpoints, emits `cancelled` and exits 3."""
        ...

    def kill(self) -> None:
        """Stop the job now, with anything it started; no checkpoint, no terminal event."""
        ...

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the job finishes (its exit code) or `timeout` seconds pass (None)."""
        ...


class Executor(Protocol):
    """Starts job processes from spec files."""

    def start(self, spec_path: Path, *, workdir: Path, env: Mapping[str, str] | None = None) -> RunningJob:
        """Start the job of `spec_path`; `workdir` holds its files, `env` adds environment variables."""
        ...


class LocalProcess:
    """A job running as a local subprocess (the leader of its own process group)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def cancel(self) -> None:
        """SIGTERM to the job process, which turns it into Ctrl-C for the training loop."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited since the check
                self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the job's whole process group, then reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited since the check
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class LocalExecutor:
    """Runs each job as `python -m lorafleet.jobs.runner SPEC` on this machine.

    The job gets its own session (so a Ctrl-C at the worker's terminal reaches only the worker) and
    `workdir` as its working directory; stdout and stderr go to `workdir/runner.log`. The job dies
    with the thread that started it (Linux's parent-death signal follows the parent *thread*), so call
    `start` from a thread that lives as long as the job, such as the worker's main loop.
    """

    def start(self, spec_path: Path, *, workdir: Path, env: Mapping[str, str] | None = None) -> LocalProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **(env or {}), PARENT_PID_ENV: str(os.getpid())}
        command = [sys.executable, "-m", "lorafleet.jobs.runner", str(Path(spec_path).absolute())]
        with open(workdir / RUNNER_LOG, "ab") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return LocalProcess(process)


class RayTask:
    """A job running as a Ray task."""

    def __init__(self, ref: Any, spec_path: Path) -> None:
        self.ref = ref
        self.spec_path = spec_path
        self._killed = False

    def poll(self) -> int | None:
        return self.wait(0)

    def cancel(self) -> None:
        """Ask the job to stop at its next step (it checkpoints first), by its cancel-request file.

        Not `ray.cancel`: its KeyboardInterrupt lands wherever the task happens to be, and in a full test
        run it once left a job running for minutes; the file is checked at a known point.
        """
        cancel_request_file(self.spec_path).touch()

    def kill(self) -> None:
        """`ray.cancel(force=True)`: the Ray worker process running the job is killed.

        A finished task is left alone: force-cancelling one that is just completing trips a check in
        Ray 2.60's driver (`TaskManager::CompletePendingTask`), which aborts the calling process.
        """
        import ray

        if self.poll() is not None:
            return
        self._killed = True
        ray.cancel(self.ref, force=True)

    def wait(self, timeout: float | None = None) -> int | None:
        import ray
        from ray.exceptions import RayError, TaskCancelledError

        ready, _ = ray.wait([self.ref], timeout=timeout)
        if not ready:
            return None
        try:
            return int(ray.get(self.ref))
        except TaskCancelledError:  # cancelled before it ran, or killed
            return -int(signal.SIGKILL) if self._killed else EXIT_CANCELLED
        except RayError:  # the worker or its node died
            return EXIT_FAILED


class RayExecutor:
    """Runs each job as a Ray task calling `run_spec` (Ray is the optional extra `ray`).

    With no `address` (and no Ray started yet) `ray.init` starts a local Ray on this machine, which
    shares its filesystem: the spec, the events file and $LORAFLEET_HOME are plain paths. On a real
    cluster the task runs on another node, so the spec, the events file, the data and the home must be
    on storage every node mounts at the same path (NFS, or an fsspec-backed mount). The job's output
    goes to Ray's worker logs, not `workdir`. Ray is started lazily, on the first `start`.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus  # CPUs each job reserves
        self.num_gpus = num_gpus  # GPUs each job reserves
        self.init_options = dict(init_options or {})  # more ray.init arguments (num_cpus of a local Ray...)
        self._task: Any = None

    def start(self, spec_path: Path, *, workdir: Path, env: Mapping[str, str] | None = None) -> RayTask:
        workdir.mkdir(parents=True, exist_ok=True)
        task = self._remote_task()
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if env:
            options["runtime_env"] = {"env_vars": dict(env)}
        spec = Path(spec_path).absolute()
        return RayTask(task.options(**options).remote(str(spec)), spec)

    def _remote_task(self) -> Any:
        """Connect to Ray (once) and wrap the job as a remote function that Ray never retries."""
        try:
            import ray
        except ImportError as err:
            raise ConfigError("executor 'ray' needs Ray: pip install 'lorafleet[ray]'") from err
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                ignore_reinit_error=True,
                include_dashboard=False,
                **self.init_options,
            )
        if self._task is None:
            self._task = ray.remote(max_retries=0)(_run_job)
        return self._task


def _run_job(spec_path: str) -> int:
    """The Ray task: the job, in the Ray worker's process."""
    from lorafleet.jobs.runner import run_spec

    return run_spec(spec_path)


EXECUTORS = ("local", "ray")


def make_executor(name: str, **options: Any) -> Executor:
    """The executor called `name` ("local" or "ray"), built with `options` (RayExecutor's arguments)."""
    if name == "local":
        if options:
            raise ConfigError(f"executor 'local' takes no options (got {sorted(options)})")
        return LocalExecutor()
    if name == "ray":
        try:
            return RayExecutor(**options)
        except TypeError as err:
            raise ConfigError(f"executor 'ray': {err}") from err
    raise ConfigError(f"executor {name!r} is unknown; choose one of {', '.join(EXECUTORS)}")
