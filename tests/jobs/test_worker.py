"""Workers: a job runs in a subprocess to a registered version, with its steps as events; cancel, bad data and
`stop()` end it without a version; a worker killed with SIGKILL takes its runner with it and leaves the job
to `recover_stale` (re-queued or failed), never a half-registered version; two workers never share a job;
the Ray executor registers versions the same way."""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from lorafleet.errors import ConfigError
from lorafleet.jobs.worker import Worker, WorkerSettings
from lorafleet.registry import Registry
from lorafleet.registry.artifacts import directory_sha256
from lorafleet.registry.tables import AdapterVersion, Job, JobEvent
from tests.helpers import write_jsonl
from tests.jobs.test_runner import ONE_THREAD, STARTUP_SECONDS, events_of, gone
from tests.support.platform import QA_ROWS, QUICK_RECIPE

# Beats and polls fast so tests see progress quickly; a long lease, so only a test recovers stale jobs.
SETTINGS = WorkerSettings(poll_seconds=0.1, heartbeat_seconds=0.2, lease_seconds=60)
LONG_STEPS = 400  # a job that is still training when the test acts on it (tens of seconds at least)
FINISH_SECONDS = 60  # from a cancel, a kill or `stop()` to the job's end


@pytest.fixture(autouse=True)
def _one_thread_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Job processes inherit the worker's environment: one thread each, like the tests themselves."""
    for name, value in ONE_THREAD.items():
        monkeypatch.setenv(name, value)


@dataclass
class TenantJobs:
    """A tenant with one uploaded QA file, submitting fine-tuning jobs straight to a registry."""

    registry: Registry
    tenant_id: str
    dataset_id: str
    base_model: str
    artifacts: Path

    def submit(self, adapter: str = "qa", *, steps: int = 6, max_retries: int = 0, **training: Any) -> Job:
        recipe = copy.deepcopy(QUICK_RECIPE)
        recipe["training"].update(max_steps=steps, **training)
        return self.registry.jobs.create(
            self.tenant_id,
            adapter_name=adapter,
            dataset_id=self.dataset_id,
            base_model=self.base_model,
            recipe=recipe,
            max_retries=max_retries,
        )

    def job(self, job_id: str) -> Job:
        return self.registry.jobs.get(self.tenant_id, job_id)

    def events(self, job_id: str) -> list[JobEvent]:
        return self.registry.jobs.events(self.tenant_id, job_id, limit=10_000)

    def messages(self, job_id: str, type: str | None = None) -> list[str]:
        return [event.message for event in self.events(job_id) if type in (None, event.type)]

    def version_count(self) -> int:
        with self.registry.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(AdapterVersion)) or 0)

    def stored_adapters(self) -> list[Path]:
        """Everything in the artifact store under the tenant's adapters (temporary copies included)."""
        folder = self.artifacts / "tenants" / self.tenant_id / "adapters"
        return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def open_registry(tmp_path: Path) -> Iterator[Callable[[str], Registry]]:
    """`open_registry(url)`: a Registry on `url` with the test's artifact store; closed after the test."""
    opened: list[Registry] = []

    def open_(url: str) -> Registry:
        registry = Registry(url, artifacts_url=str(tmp_path / "artifacts"))
        opened.append(registry)
        return registry

    yield open_
    for registry in opened:
        registry.close()


def tenant_jobs(registry: Registry, tmp_path: Path, tiny_dir: Path, rows: list[Any] = QA_ROWS) -> TenantJobs:
    tenant = registry.tenants.create("acme")
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    dataset = registry.datasets.add(
        tenant.id, data, filename="qa.jsonl", format="prompt_completion", rows=len(rows), tokens=400
    )
    return TenantJobs(registry, tenant.id, dataset.id, str(tiny_dir), tmp_path / "artifacts")


@pytest.fixture
def sqlite_jobs(open_registry: Callable[[str], Registry], tmp_path: Path, tiny_dir: Path) -> TenantJobs:
    return tenant_jobs(open_registry(f"sqlite:///{tmp_path / 'registry.db'}"), tmp_path, tiny_dir)


@pytest.fixture
def any_db_jobs(
    open_registry: Callable[[str], Registry], database_url: str, tmp_path: Path, tiny_dir: Path
) -> TenantJobs:
    """Parametrized: the registry on SQLite, then on PostgreSQL."""
    return tenant_jobs(open_registry(database_url), tmp_path, tiny_dir)


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy (which is returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def wait_for_step(jobs: TenantJobs, job_id: str) -> Job:
    """The job once it runs and has reported a training step (the runner is mid-training)."""
    return wait_until(
        lambda: (job := jobs.job(job_id)).status == "running" and job.step >= 1 and job,
        STARTUP_SECONDS,
        f"step 1 of job {job_id}",
    )


def runner_pid(home: Path, job_id: str, attempt: int = 1) -> int:
    """The job process's pid, from the first event of its events file (`started`)."""
    events = events_of(home / "work" / job_id / f"attempt-{attempt}" / "events.jsonl")
    assert events[0]["type"] == "started", events[0]
    return int(events[0]["pid"])


@contextmanager
def worker_thread(registry: Registry, settings: WorkerSettings = SETTINGS) -> Iterator[Worker]:
    """A worker looping in a thread (its job processes die with that thread); stopped on leaving."""
    worker = Worker(registry, settings)
    thread = threading.Thread(target=worker.run, name=f"worker-{worker.worker_id}", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(FINISH_SECONDS)
        assert not thread.is_alive(), "the worker did not stop"


# --- a job to its version -------------------------------------------------------------------------------


@pytest.mark.integration
def test_worker_runs_a_job_to_a_registered_version(sqlite_jobs: TenantJobs, lorafleet_home: Path) -> None:
    jobs = sqlite_jobs
    job = jobs.submit(steps=6)
    worker = Worker(jobs.registry, SETTINGS)

    assert worker.run_once() is True

    done = jobs.job(job.id)
    assert (done.status, done.error, done.attempts) == ("succeeded", None, 1)
    assert done.trained_tokens > 0 and (done.step, done.total_steps) == (6, 6)
    [version] = jobs.registry.adapters.versions(jobs.tenant_id, "qa")
    assert version.id == done.version_id and version.number == 1
    assert (version.job_id, version.dataset_id) == (job.id, jobs.dataset_id)
    assert version.base_model == jobs.base_model
    stored = jobs.registry.adapters.local_path(version)
    assert (stored / "adapter_model.safetensors").is_file()
    assert re.fullmatch(r"[0-9a-f]{64}", version.sha256) and version.sha256 == directory_sha256(stored)
    assert version.metrics["steps"] == 6 and version.metrics["tokens"] == done.trained_tokens
    assert version.metrics["final_train_loss"] > 0

    metrics = [event for event in jobs.events(job.id) if event.type == "metrics"]
    assert [event.message for event in metrics] == [f"step {step}/6" for step in range(1, 7)]
    assert all(event.data is not None and event.data["loss"] > 0 for event in metrics)
    statuses = jobs.messages(job.id, "status")
    assert statuses[1] == "job started (attempt 1)"
    assert statuses[-1] == "job succeeded"
    assert not (lorafleet_home / "work" / job.id).exists()
    assert not (lorafleet_home / "adapters" / job.id).exists()
    assert worker.run_once() is False  # the queue is empty


# --- a worker killed midway -----------------------------------------------------------------------------

# A worker in its own process, as `lorafleet serve --workers` or a worker machine runs it.
WORKER_PROCESS = """
import sys
from lorafleet.jobs.worker import Worker, WorkerSettings
from lorafleet.registry import Registry

database_url, artifacts_url, settings = sys.argv[1:]
registry = Registry(database_url, artifacts_url=artifacts_url)
Worker(registry, WorkerSettings.model_validate_json(settings)).run()
"""


@pytest.mark.integration
def test_sigkilled_worker_leaves_no_version_and_its_job_is_requeued_or_failed(
    any_db_jobs: TenantJobs, tmp_path: Path, lorafleet_home: Path
) -> None:
    jobs = any_db_jobs
    retried = jobs.submit("retried", steps=LONG_STEPS, checkpoint_steps=0, max_retries=1)
    failed = jobs.submit("failed", steps=LONG_STEPS, checkpoint_steps=0, max_retries=0)
    command = [
        sys.executable,
        "-c",
        WORKER_PROCESS,
        jobs.registry.db.url,
        str(jobs.artifacts),
        SETTINGS.model_dump_json(),
    ]
    workers = []  # one per job, each in its own process with LORAFLEET_HOME = this test's home
    for index in range(2):
        with open(tmp_path / f"worker-{index}.log", "wb") as log:
            workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    try:
        for job in (retried, failed):
            wait_for_step(jobs, job.id)
        runners = [runner_pid(lorafleet_home, job.id) for job in (retried, failed)]
        killed_at = time.time()

        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)
        for worker in workers:
            assert worker.wait(10) == -signal.SIGKILL
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()

    for pid in runners:  # the job processes died with their workers (PR_SET_PDEATHSIG)
        wait_until(functools.partial(gone, pid), 10, f"the exit of job process {pid}")
    assert jobs.version_count() == 0 and jobs.registry.adapters.all(jobs.tenant_id) == []
    assert jobs.stored_adapters() == []
    orphans = [jobs.job(job.id) for job in (retried, failed)]
    for orphan in orphans:  # nobody finished them: running, on a heartbeat that has stopped
        assert orphan.status == "running" and orphan.heartbeat_at is not None
        assert orphan.heartbeat_at <= killed_at
        assert jobs.messages(orphan.id).count("job started (attempt 1)") == 1
    assert len({orphan.worker_id for orphan in orphans}) == 2  # one job each
    assert Worker(jobs.registry, SETTINGS).run_once() is False  # within the lease: left alone

    wait_until(lambda: time.time() - killed_at > 1.2, 5, "a second without heartbeats")
    recovered = jobs.registry.jobs.recover_stale(lease_seconds=1)

    assert {job.id for job in recovered} == {retried.id, failed.id}
    requeued = jobs.job(retried.id)
    assert (requeued.status, requeued.worker_id, requeued.attempts) == ("queued", None, 1)
    assert "its worker stopped responding" in jobs.messages(retried.id)[-1]
    assert "re-queued (attempt 1 of 2)" in jobs.messages(retried.id)[-1]
    given_up = jobs.job(failed.id)
    assert given_up.status == "failed" and given_up.error is not None
    assert "stopped responding" in given_up.error and "no retries left" in given_up.error

    # The retry: a fresh worker takes the re-queued job (shortened here, so the test does not wait for
    # 400 steps) and completes it as the adapter's only version.
    with jobs.registry.db.session() as session:
        row = session.get_one(Job, retried.id)
        row.recipe = {**row.recipe, "training": {**row.recipe["training"], "max_steps": 6}}
    assert Worker(jobs.registry, SETTINGS).run_once() is True

    done = jobs.job(retried.id)
    assert (done.status, done.attempts) == ("succeeded", 2)
    assert any(message.endswith("(attempt 2)") for message in jobs.messages(retried.id, "status"))
    [version] = jobs.registry.adapters.versions(jobs.tenant_id, "retried")
    assert (version.number, version.job_id) == (1, retried.id)
    assert jobs.version_count() == 1
    assert jobs.job(failed.id).status == "failed"
    assert not (lorafleet_home / "work" / retried.id).exists()  # the killed attempt's scratch too


# --- runs that end without a version --------------------------------------------------------------------


@pytest.mark.integration
def test_cancel_stops_the_runner_and_registers_nothing(
    sqlite_jobs: TenantJobs, lorafleet_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lorafleet.jobs.worker")
    jobs = sqlite_jobs
    job = jobs.submit(steps=LONG_STEPS, checkpoint_steps=0)
    with worker_thread(jobs.registry):
        wait_for_step(jobs, job.id)
        pid = runner_pid(lorafleet_home, job.id)

        assert jobs.registry.jobs.cancel(jobs.tenant_id, job.id).status == "cancelled"  # at once

        done = wait_until(
            lambda: not (found := jobs.job(job.id)).cancel_requested and found,
            FINISH_SECONDS,
            "the run's stop",
        )
        assert gone(pid)

    assert (done.status, done.version_id) == ("cancelled", None)
    assert jobs.version_count() == 0 and jobs.stored_adapters() == []
    messages = jobs.messages(job.id)
    assert "job cancelled; its run is being stopped" in messages
    assert any(re.fullmatch(r"run stopped after step \d+", message) for message in messages)
    assert messages[-1] == "run stopped; no adapter version was registered"
    # The runner took SIGTERM as Ctrl-C: training stopped at a step and wrote its checkpoint (server log).
    assert re.search(rf"job {job.id}: interrupted at step \d+; checkpoint saved in /", caplog.text)
    assert not (lorafleet_home / "work" / job.id).exists()


class _EndsAsItIsCancelled:
    """An executor whose run completes, with an adapter, just as the tenant cancels the job."""

    def __init__(self, jobs: TenantJobs, adapter: Path) -> None:
        self.jobs, self.adapter = jobs, adapter

    def start(self, spec_path: Path, *, workdir: Path, env: Any = None) -> Any:
        result = {"type": "result", "adapter_dir": str(self.adapter), "run_dir": str(workdir), "summary": {}}
        (workdir / "events.jsonl").write_text(json.dumps(result) + "\n")
        jobs, job_id = self.jobs, workdir.parent.name

        class Run:
            def wait(self, timeout: float | None = None) -> int:
                if jobs.job(job_id).status == "running":
                    jobs.registry.jobs.cancel(jobs.tenant_id, job_id)
                return 0

            def cancel(self) -> None:
                pass

            def kill(self) -> None:
                pass

        return Run()


def test_a_run_that_completes_as_its_job_is_cancelled_registers_nothing(
    sqlite_jobs: TenantJobs, random_adapter: Path, lorafleet_home: Path
) -> None:
    jobs = sqlite_jobs
    job = jobs.submit()

    assert Worker(jobs.registry, SETTINGS, executor=_EndsAsItIsCancelled(jobs, random_adapter)).run_once()

    done = jobs.job(job.id)
    assert (done.status, done.version_id, done.cancel_requested) == ("cancelled", None, False)
    assert jobs.version_count() == 0
    assert [path for path in jobs.stored_adapters() if path.is_file()] == []  # its artifact was removed
    assert jobs.messages(job.id)[-1] == "run stopped; no adapter version was registered"


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["bad row", "bad recipe"])
def test_bad_data_fails_the_job_with_a_message_naming_it(
    fault: str, open_registry: Callable[[str], Registry], tmp_path: Path, tiny_dir: Path
) -> None:
    rows: list[Any] = copy.deepcopy(QA_ROWS)
    if fault == "bad row":
        rows[2]["completion"] = 7
    jobs = tenant_jobs(open_registry(f"sqlite:///{tmp_path / 'registry.db'}"), tmp_path, tiny_dir, rows)
    # The API validates recipes; a job row can still hold one it would refuse (an older server, a bug).
    training: dict[str, Any] = {"learning_rate": -1} if fault == "bad recipe" else {}
    job = jobs.submit(**training)

    assert Worker(jobs.registry, SETTINGS).run_once() is True

    done = jobs.job(job.id)
    assert done.status == "failed" and done.error is not None
    if fault == "bad row":
        assert done.error == "qa.jsonl:3: 'completion' must be a string (got int)"  # its name as uploaded
    else:
        assert done.error == "job config: training.learning_rate: Input should be greater than 0 (got -1)"
    assert jobs.messages(job.id)[-1] == f"job failed: {done.error}"
    assert jobs.version_count() == 0 and jobs.stored_adapters() == []


def test_a_job_whose_executor_cannot_start_fails(sqlite_jobs: TenantJobs, lorafleet_home: Path) -> None:
    class Unavailable:
        def start(self, spec_path: Path, *, workdir: Path, env: Any = None) -> Any:
            raise ConfigError("executor 'ray' needs Ray: pip install 'lorafleet[ray]'")

    jobs = sqlite_jobs
    job = jobs.submit()

    assert Worker(jobs.registry, SETTINGS, executor=Unavailable()).run_once() is True

    done = jobs.job(job.id)
    assert (done.status, done.error) == ("failed", "executor 'ray' needs Ray: pip install 'lorafleet[ray]'")
    assert not (lorafleet_home / "work" / job.id).exists()


def test_run_outlives_an_error_between_jobs(
    sqlite_jobs: TenantJobs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = sqlite_jobs.registry.jobs
    recover_stale, calls = jobs.recover_stale, []

    def database_gone_once(**options: Any) -> list[Job]:
        calls.append(options)
        if len(calls) == 1:
            raise OperationalError("SELECT ...", {}, Exception("server closed the connection unexpectedly"))
        return recover_stale(**options)

    monkeypatch.setattr(jobs, "recover_stale", database_gone_once)
    with worker_thread(sqlite_jobs.registry) as worker:
        wait_until(lambda: len(calls) >= 3, 10, "the worker's next polls")  # the loop went on

    assert f"worker {worker.worker_id}: error while taking or running a job" in caplog.text
    assert "server closed the connection unexpectedly" in caplog.text


@pytest.mark.integration
def test_stop_requeues_the_running_job_without_counting_the_try(
    sqlite_jobs: TenantJobs, lorafleet_home: Path
) -> None:
    jobs = sqlite_jobs
    job = jobs.submit(steps=LONG_STEPS, checkpoint_steps=0, max_retries=0)
    with worker_thread(jobs.registry) as worker:
        wait_for_step(jobs, job.id)
        pid = runner_pid(lorafleet_home, job.id)

        worker.stop()  # leaving the block waits for the worker's loop to end

    assert gone(pid)
    back = jobs.job(job.id)
    assert (back.status, back.worker_id, back.attempts, back.step) == ("queued", None, 0, 0)
    assert jobs.messages(job.id)[-1] == "the worker running the job is shutting down; re-queued"
    assert jobs.version_count() == 0 and jobs.stored_adapters() == []
    assert not (lorafleet_home / "work" / job.id).exists()


# --- several workers ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_two_workers_run_each_job_exactly_once(
    open_registry: Callable[[str], Registry], postgres_url: str, tmp_path: Path, tiny_dir: Path
) -> None:
    """On PostgreSQL, where workers claim side by side (`SKIP LOCKED`); on SQLite claims are serial, and
    two worker processes claiming at once are in the SIGKILL test."""
    jobs = tenant_jobs(open_registry(postgres_url), tmp_path, tiny_dir)
    submitted = [jobs.submit() for _ in range(3)]
    ids = {job.id for job in submitted}
    url = jobs.registry.db.url
    with worker_thread(open_registry(url)), worker_thread(open_registry(url)):  # a Registry each
        wait_until(
            lambda: all(jobs.job(job_id).status not in ("queued", "running") for job_id in ids),
            3 * STARTUP_SECONDS,
            "the end of all three jobs",
        )

    for job_id in ids:
        done = jobs.job(job_id)
        assert (done.status, done.error, done.attempts) == ("succeeded", None, 1)
        assert jobs.messages(job_id).count("job started (attempt 1)") == 1
    versions = jobs.registry.adapters.versions(jobs.tenant_id, "qa")
    assert [version.number for version in versions] == [1, 2, 3]
    assert {version.job_id for version in versions} == ids
    assert {jobs.job(job_id).version_id for job_id in ids} == {version.id for version in versions}


# --- Ray ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray (one CPU) for this module's Ray tests: it takes seconds to start."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.integration
def test_worker_with_the_ray_executor_registers_the_version(
    local_ray: None, sqlite_jobs: TenantJobs, lorafleet_home: Path
) -> None:
    jobs = sqlite_jobs
    job = jobs.submit()
    worker = Worker(jobs.registry, SETTINGS.model_copy(update={"executor": "ray"}))

    assert worker.run_once() is True

    done = jobs.job(job.id)
    assert (done.status, done.error) == ("succeeded", None)
    [version] = jobs.registry.adapters.versions(jobs.tenant_id, "qa")
    assert version.id == done.version_id and version.job_id == job.id
    assert (jobs.registry.adapters.local_path(version) / "adapter_model.safetensors").is_file()
    assert [e.message for e in jobs.events(job.id) if e.type == "metrics"][-1] == "step 6/6"
    assert not (lorafleet_home / "adapters" / job.id).exists()


@pytest.mark.integration
def test_cancel_stops_a_ray_run_and_registers_nothing(
    local_ray: None, sqlite_jobs: TenantJobs, lorafleet_home: Path
) -> None:
    jobs = sqlite_jobs
    job = jobs.submit(steps=LONG_STEPS, checkpoint_steps=0)
    with worker_thread(jobs.registry, SETTINGS.model_copy(update={"executor": "ray"})):
        wait_for_step(jobs, job.id)

        assert jobs.registry.jobs.cancel(jobs.tenant_id, job.id).status == "cancelled"  # at once

        done = wait_until(
            lambda: not (found := jobs.job(job.id)).cancel_requested and found, FINISH_SECONDS, "the stop"
        )

    assert (done.status, done.version_id) == ("cancelled", None)
    assert jobs.version_count() == 0 and jobs.stored_adapters() == []
    messages = jobs.messages(job.id)  # the run took the cancel-request file at its next step
    assert any(re.fullmatch(r"run stopped after step \d+", message) for message in messages)
    assert messages[-1] == "run stopped; no adapter version was registered"
