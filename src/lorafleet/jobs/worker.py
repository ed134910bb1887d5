"""A worker: claims fine-tuning jobs from the registry's queue and runs each in its own process.

    loop      recover stale jobs → claim the oldest queued job → run it (none queued: run the oldest
              queued export, `jobs.exports`) → repeat (sleep when idle)
    run       write the job's spec → executor starts the runner (`jobs.runner`) → tail its events file:
              step metrics and logs go to the registry with each heartbeat; a cancelled job's run is
              stopped (it checkpoints) → on success register the adapter as a new version and mark the
              job succeeded in one transaction; else mark it failed, or record that the cancelled run
              stopped

The training never runs in the worker's own process, so a crash in training cannot take the worker
down, and a killed worker takes its runner with it (the runner dies with its parent). A job whose
worker vanished is found by `recover_stale` in any worker (or the server) once its heartbeat is older
than the lease, and re-queued while it has retries left. No version is registered unless the runner
finished and the worker still owned the job, and none for a job cancelled meanwhile: the registry
refuses to mark it succeeded, in the transaction that would register the version.

The job's events and error are the tenant's to read: the runner's messages reach them through
`TenantText` (the training file by its uploaded name, no host paths, no worker or host names), and
the full text, the job process's pid and its log go to the server log (`logging`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.continual import FISHER_FILE
from lorafleet.errors import ConflictError, LorafleetError
from lorafleet.home import lorafleet_home
from lorafleet.jobs.executors import RUNNER_LOG, Executor, RunningJob, make_executor
from lorafleet.jobs.exports import run_export
from lorafleet.jobs.runner import EXIT_CANCELLED, read_events
from lorafleet.jobs.tenant_text import TenantText
from lorafleet.registry import Registry
from lorafleet.registry.tables import Job

PARENT_DIR = "parent"  # the job's private copy of its parent version's adapter, inside the job's folder

logger = logging.getLogger(__name__)


class WorkerSettings(BaseModel):
    """How a worker polls, reports and recovers."""

    model_config = ConfigDict(extra="forbid")

    poll_seconds: float = Field(1.0, gt=0, le=60, description="Sleep between claims when the queue is empty.")
    heartbeat_seconds: float = Field(2.0, gt=0, le=60, description="Progress is written this often.")
    lease_seconds: float = Field(
        30.0, gt=0, le=86_400, description="A running job without a heartbeat this long is recovered."
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="Where runs execute: local (processes here) or ray."
    )
    ray_address: str | None = Field(None, description="Ray cluster address for executor ray (None: local).")
    workdir: str | None = Field(None, description="Runs' scratch space; default $LORAFLEET_HOME/work.")
    keep_workdir: bool = Field(False, description="Keep a finished run's scratch files (for debugging).")


class Worker:
    """Runs queued jobs one at a time; start several for parallel jobs (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        settings: WorkerSettings | None = None,
        *,
        worker_id: str | None = None,
        executor: Executor | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.say = say or logger.info  # one line per job taken and per job ended
        self.settings = settings or WorkerSettings()
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid4().hex[:6]}"
        options = {"address": self.settings.ray_address} if self.settings.executor == "ray" else {}
        self.executor = executor or make_executor(self.settings.executor, **options)
        self.workdir = Path(self.settings.workdir or lorafleet_home() / "work")
        self.stopping = threading.Event()

    def run(self) -> None:
        """Claim and run jobs until `stop()`; a job running then is stopped and re-queued (if not cancelled).

        An unexpected error (the database unreachable, say) is logged and the loop goes on after
        `poll_seconds`, so a worker thread never dies of one; a job it cut short is recovered once its
        lease runs out.
        """
        while not self.stopping.is_set():
            try:
                busy = self.run_once()
            except Exception as err:
                logger.exception("worker %s: error while taking or running a job", self.worker_id)
                self.say(f"error: {err}")
                busy = False
            if not busy:
                self.stopping.wait(self.settings.poll_seconds)

    def stop(self) -> None:
        self.stopping.set()

    def run_once(self) -> bool:
        """Recover stale jobs, then claim one job and run it to its end; False when the queue was empty."""
        self.registry.jobs.recover_stale(lease_seconds=self.settings.lease_seconds)
        job = self.registry.jobs.claim(self.worker_id)
        if job is None:
            return self.run_export()
        self.say(
            f"{job.id}: started (tenant {job.tenant_id}, adapter {job.adapter_name}, attempt {job.attempts})"
            f" on worker {self.worker_id}"
        )
        status = self.run_job(job)
        self.say(f"{job.id}: {'re-queued' if status == 'queued' else status}")
        return True

    def run_export(self) -> bool:
        """Claim one queued export and run it (`jobs.exports`); False when there was none."""
        claimed = self.registry.exports.claim(self.worker_id)
        if claimed is None:
            return False
        export, version = claimed
        self.say(f"{export.id}: export of {version.id} to {export.format} started on worker {self.worker_id}")
        status = run_export(self.registry, export, version, self.workdir, hidden=self.worker_id)
        self.say(f"{export.id}: {status}")
        return True

    def run_job(self, job: Job) -> str:
        """Run a job this worker has claimed; its final status (or "lost" if another took it over)."""
        folder = self.workdir / job.id / f"attempt-{job.attempts}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        try:
            return self._supervise(job, folder)
        except ConflictError:  # cancelled meanwhile (its run's end does not count), or taken over
            return self._stopped_or_lost(job)
        finally:
            if not self.settings.keep_workdir:
                shutil.rmtree(folder.parent, ignore_errors=True)
                shutil.rmtree(lorafleet_home() / "adapters" / job.id, ignore_errors=True)

    def _supervise(self, job: Job, folder: Path) -> str:
        jobs = self.registry.jobs
        try:
            spec, names = self._write_spec(job, folder)
        except LorafleetError as err:  # its file gone from the store, say
            return self._fail_to_start(job, err, TenantText(hidden=(self.worker_id,)))
        text = TenantText(names, hidden=(self.worker_id,))
        started = time.perf_counter()
        try:
            running = self.executor.start(spec, workdir=folder)
        except LorafleetError as err:  # Ray missing, say: fail now rather than leave the job running
            return self._fail_to_start(job, err, text)
        tail = _EventTail(folder / "events.jsonl", job.id, text)
        last_beat = 0.0
        code: int | None = None
        try:
            while code is None:  # the last pass reads the events the run ended with and beats them
                code = running.wait(0.25)
                tail.read()
                if code is None and time.monotonic() - last_beat < self.settings.heartbeat_seconds:
                    continue
                last_beat = time.monotonic()
                if self._beat(job, tail) and code is None:
                    running.cancel()
                if self.stopping.is_set() and code is None:
                    running.kill()
                    running.wait(30)
                    logger.info(
                        "job %s: worker %s is shutting down; its run was killed", job.id, self.worker_id
                    )
                    return jobs.release(job.id, self.worker_id, "the worker running the job is shutting down")
        except BaseException:  # ConflictError: the job was recovered by someone else (see `run_job`)
            _stop(running)
            raise
        return self._finish(job, code, tail, time.perf_counter() - started, folder)

    def _fail_to_start(self, job: Job, err: LorafleetError, text: TenantText) -> str:
        logger.warning("job %s: its run could not start: %s", job.id, err)
        self.registry.jobs.finish(job.id, self.worker_id, "failed", error=text(str(err)))
        return "failed"

    def _beat(self, job: Job, tail: _EventTail) -> bool:
        """Send new progress and events; whether cancellation was asked."""
        return self.registry.jobs.heartbeat(
            job.id,
            self.worker_id,
            step=tail.step,
            total_steps=tail.total_steps,
            metrics=tail.metrics,
            events=tail.take(),
        )

    def _stopped_or_lost(self, job: Job) -> str:
        """After a `ConflictError`: "cancelled" once a cancelled job's run is recorded ended, else "lost"."""
        try:
            self.registry.jobs.run_stopped(job.id, self.worker_id)
        except ConflictError:
            logger.warning(
                "job %s: worker %s no longer holds it; its run was dropped", job.id, self.worker_id
            )
            return "lost"
        logger.info("job %s: cancelled while running; its run has stopped", job.id)
        return "cancelled"

    def _finish(self, job: Job, code: int, tail: _EventTail, seconds: float, folder: Path) -> str:
        """Register the adapter, or mark the job failed or cancelled; `ConflictError` if it was cancelled."""
        jobs = self.registry.jobs
        if code == 0 and tail.result is not None:
            summary = tail.result.get("summary", {})
            try:
                self.registry.complete_job(
                    job,
                    self.worker_id,
                    Path(tail.result["adapter_dir"]),
                    metrics={**_version_metrics(summary), **self._data_scrub(job)},
                    trained_tokens=int(summary.get("tokens", 0)),
                    compute_seconds=seconds,
                )
            except ConflictError:  # cancelled meanwhile: the version and its artifact were rolled back
                raise
            except LorafleetError as err:  # a quota, a missing artifact: the run is lost, the job fails
                logger.warning("job %s: could not register the adapter: %s", job.id, err)
                error = f"could not register the adapter: {tail.text(str(err))}"
                jobs.finish(job.id, self.worker_id, "failed", error=error)
                return "failed"
            self._keep_parent_fisher(job, folder)
            return "succeeded"
        if code == EXIT_CANCELLED:
            jobs.finish(job.id, self.worker_id, "cancelled")
            return "cancelled"
        log = _log_tail(folder / RUNNER_LOG)
        logger.warning("job %s: the job process exited with code %s in %s%s", job.id, code, folder, log)
        error = tail.error or f"the training process exited with code {code}"
        jobs.finish(job.id, self.worker_id, "failed", error=error)
        return "failed"

    def _data_scrub(self, job: Job) -> dict[str, Any]:
        """`data_scrub` for the version's metrics when its training file was scrubbed on upload (file id,
        rows, kinds found, the audit chain's head), so the version names the report it was trained under."""
        from lorafleet.privacy.audit import scrub_record

        datasets = self.registry.datasets
        report = datasets.scrub_report(datasets.get(job.tenant_id, job.dataset_id))
        return {"data_scrub": scrub_record(report, file=job.dataset_id)} if report is not None else {}

    def _keep_parent_fisher(self, job: Job, folder: Path) -> None:
        """Store the Fisher an EWC run estimated on its parent's rows with the parent version, so the parent's
        next EWC child reads it instead of estimating it again. Losing it costs only that estimate."""
        estimated = folder / PARENT_DIR / FISHER_FILE
        if job.parent_version_id is None or not estimated.is_file():
            return
        try:
            parent = self.registry.adapters.by_id(job.tenant_id, job.parent_version_id)
            if self.registry.adapters.stored_fisher(parent) is None:
                self.registry.adapters.store_fisher(parent, estimated)
        except (LorafleetError, OSError) as err:
            logger.warning("job %s: could not keep the parent's Fisher: %s", job.id, err)

    def _write_spec(self, job: Job, folder: Path) -> tuple[Path, dict[str, str]]:
        """The run's spec file, and its data files' paths → their names as the tenant uploaded them."""
        datasets = self.registry.datasets
        recipe: dict[str, Any] = copy.deepcopy(job.recipe)
        recipe.setdefault("model", {})["name"] = job.base_model
        data = recipe.setdefault("data", {})
        files = {"path": datasets.get(job.tenant_id, job.dataset_id)}
        if job.validation_dataset_id is not None:
            files["validation_path"] = datasets.get(job.tenant_id, job.validation_dataset_id)
        clash = len({file.filename for file in files.values()}) < len(files)  # two "train.jsonl"
        names = {}
        for key, file in files.items():
            data[key] = str(datasets.local_path(file))
            names[data[key]] = f"{file.filename} ({file.id})" if clash else file.filename
        if job.parent_version_id is not None:
            names |= self._parent(job, recipe, folder)
        suites = []
        for suite in self.registry.evaluation.suite_specs(
            job.tenant_id, job.adapter_name, job.parent_version_id
        ):
            file = datasets.get(job.tenant_id, suite.pop("file"))
            suites.append({**suite, "path": str(datasets.local_path(file))})
            names[suites[-1]["path"]] = f"{file.filename} (suite {suite['id']})"
        # The adapter is written under the job's id (unique), registered, then removed from there.
        recipe["output"] = {"name": job.id, "run_dir": str(folder / "run"), "overwrite": True}
        spec = folder / "spec.json"
        events = str(folder / "events.jsonl")
        body = {"config": recipe, "events": events, "home": str(lorafleet_home()), "suites": suites}
        spec.write_text(json.dumps(body))
        return spec, names

    def _parent(self, job: Job, recipe: dict[str, Any], folder: Path) -> dict[str, str]:
        """Point the recipe at the job's parent version: a private copy of its adapter (`model.parent`; EWC
        may store the parent's Fisher beside it, and the registered artifact must stay as it is) and, for
        the strategies that read them, its own training rows (`continual.replay_paths`). Returns those
        rows' path → the name the tenant uploaded them under."""
        assert job.parent_version_id is not None
        parent = self.registry.adapters.by_id(job.tenant_id, job.parent_version_id)
        copy_dir = folder / PARENT_DIR
        shutil.copytree(self.registry.adapters.local_path(parent), copy_dir)
        recipe["model"]["parent"] = str(copy_dir)
        continual = recipe.setdefault("continual", {})
        fisher = self.registry.adapters.stored_fisher(parent) if continual.get("strategy") == "ewc" else None
        if fisher is not None:  # estimated by an earlier child: EWC reads it instead of estimating again
            shutil.copyfile(fisher, copy_dir / FISHER_FILE)
        if continual.get("strategy") not in ("replay", "ewc") or parent.dataset_id is None:
            return {}
        rows = self.registry.datasets.get(job.tenant_id, parent.dataset_id)
        continual["replay_paths"] = [str(self.registry.datasets.local_path(rows))]
        return {continual["replay_paths"][0]: f"{rows.filename} (the parent's rows)"}


class _EventTail:
    """The runner's events file read as it grows: progress so far, new events for the registry, the end.

    Messages reach the registry as the tenant may read them (`text`); as written, with the job process's
    pid and host, they go to the server log.
    """

    def __init__(self, path: Path, job_id: str, text: TenantText) -> None:
        self.path = path
        self.job_id = job_id
        self.text = text
        self.offset = 0
        self.step: int | None = None
        self.total_steps: int | None = None
        self.metrics: dict[str, Any] = {}
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self._pending: list[tuple[str, str, dict[str, Any] | None]] = []

    def read(self) -> None:
        if not self.path.exists():
            return
        events, self.offset = read_events(self.path, self.offset)
        for event in events:
            kind = event.get("type")
            message = str(event.get("message", ""))
            if kind == "started":
                logger.info(
                    "job %s: job process %s started on %s", self.job_id, event.get("pid"), event.get("host")
                )
            elif kind == "step":
                self.step, self.total_steps = event.get("step"), event.get("total_steps")
                self.metrics = {
                    k: v for k, v in event.get("metrics", {}).items() if isinstance(v, int | float)
                }
                data = {"step": self.step, **self.metrics}  # a point of the dashboard's loss curve
                self._pending.append(("metrics", f"step {self.step}/{self.total_steps}", data))
            elif kind == "log":
                logger.info("job %s: %s", self.job_id, message)
                self._pending.append(("message", self.text(message), None))
            elif kind == "result":
                self.result = event
            elif kind == "error":
                logger.warning("job %s: %s", self.job_id, message)
                self.error = self.text(message)
                self._pending.append(("message", self.error, None))
            elif kind == "cancelled":  # the runner's message names the checkpoint's path and a CLI command
                logger.info("job %s: %s", self.job_id, message)
                stopped = "before training began" if self.step is None else f"after step {self.step}"
                self._pending.append(("message", f"run stopped {stopped}", None))

    def take(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        pending, self._pending = self._pending, []
        return pending


def _version_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers a version keeps from its run's summary."""
    keep = ("steps", "final_train_loss", "tokens", "train_seconds", "evaluation")
    return {key: summary[key] for key in keep if key in summary}


def _log_tail(path: Path, chars: int = 4000) -> str:
    """The end of the job process's output (its traceback), for the server log; "" when there is none."""
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - chars))
            text = file.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f"; its output ends:\n{text}" if text else ""


def _stop(running: RunningJob) -> None:
    running.kill()
    running.wait(30)
