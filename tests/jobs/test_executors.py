"""Executors: a local subprocess and a Ray task each run a job to its `result` event, cancel stops it at a
checkpoint (exit 3), kill stops it at once; `make_executor` names the executors it knows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorafleet.errors import ConfigError
from lorafleet.jobs.executors import LocalExecutor, RayExecutor, make_executor
from lorafleet.jobs.runner import EXIT_CANCELLED, EXIT_OK
from tests.jobs.test_runner import (
    ONE_THREAD,
    STARTUP_SECONDS,
    events_of,
    gone,
    is_started,
    is_step,
    wait_for_event,
    write_spec,
)

# --- make_executor --------------------------------------------------------------------------------------


def test_make_executor_builds_each_kind() -> None:
    assert isinstance(make_executor("local"), LocalExecutor)
    ray_executor = make_executor("ray", address="ray://head:10001", num_cpus=2)
    assert isinstance(ray_executor, RayExecutor)
    assert (ray_executor.address, ray_executor.num_cpus) == ("ray://head:10001", 2)


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("slurm", {}, "executor 'slurm' is unknown; choose one of local, ray"),
        ("local", {"num_cpus": 2}, "executor 'local' takes no options"),
        ("ray", {"cpus": 2}, "executor 'ray':"),
    ],
)
def test_make_executor_rejects_what_it_does_not_know(name: str, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        make_executor(name, **options)


# --- local processes ------------------------------------------------------------------------------------


def test_local_executor_runs_a_job_to_its_result(tmp_path: Path, tiny_dir: Path) -> None:
    home = tmp_path / "env-home"  # from `env`: the spec names no home
    spec, events_path = write_spec(tmp_path / "job", tiny_dir, steps=2)
    workdir = tmp_path / "work"

    job = LocalExecutor().start(spec, workdir=workdir, env=ONE_THREAD | {"LORAFLEET_HOME": str(home)})
    assert job.poll() is None  # still importing torch
    code = job.wait(STARTUP_SECONDS)

    assert code == EXIT_OK, (workdir / "runner.log").read_text()[-2000:]
    assert job.poll() == EXIT_OK
    job.cancel()  # finished: nothing to do
    result = events_of(events_path)[-1]
    assert result["type"] == "result"
    assert Path(result["adapter_dir"]) == home / "adapters" / "job"
    assert (home / "adapters" / "job" / "adapter_model.safetensors").is_file()
    assert "LoRA r=4" in (workdir / "runner.log").read_text()  # the job's output
    assert "LORAFLEET_HOME" not in ONE_THREAD and os.environ["LORAFLEET_HOME"] != str(home)


def test_local_kill_stops_the_job_at_once(tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=100_000)
    job = LocalExecutor().start(spec, workdir=tmp_path / "work", env=ONE_THREAD)
    try:
        wait_for_event(events_path, is_started, STARTUP_SECONDS)
        assert job.wait(0.01) is None

        job.kill()

        assert job.poll() == -9
        assert gone(job.pid)
        kinds = {event["type"] for event in events_of(events_path)}
        assert not {"result", "error", "cancelled"} & kinds
    finally:
        job.kill()


# --- Ray ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray (one CPU) for every Ray test of this module: it takes seconds to start."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.integration
def test_ray_executor_runs_a_job_to_its_result(local_ray: None, tmp_path: Path, tiny_dir: Path) -> None:
    home = tmp_path / "job-home"
    spec, events_path = write_spec(tmp_path / "job", tiny_dir, steps=2, home=home)

    job = RayExecutor().start(spec, workdir=tmp_path / "work")

    assert job.wait(STARTUP_SECONDS) == EXIT_OK
    assert job.poll() == EXIT_OK
    kinds = [event["type"] for event in events_of(events_path)]
    assert kinds.count("step") == 2 and kinds[-1] == "result"
    assert (home / "adapters" / "job" / "adapter_model.safetensors").is_file()


@pytest.mark.integration
def test_ray_cancel_checkpoints_and_exits_3(local_ray: None, tmp_path: Path, tiny_dir: Path) -> None:
    home = tmp_path / "job-home"
    spec, events_path = write_spec(tmp_path / "job", tiny_dir, steps=100_000, home=home)
    job = RayExecutor().start(spec, workdir=tmp_path / "work")
    try:
        wait_for_event(events_path, is_step, STARTUP_SECONDS)
        assert job.poll() is None

        job.cancel()

        assert job.wait(180) == EXIT_CANCELLED  # generous: a loaded 2-core machine slows the checkpoint
        events = events_of(events_path)
        assert events[-1]["type"] == "cancelled" and "result" not in {event["type"] for event in events}
        assert list((home / "runs" / "job" / "checkpoints").iterdir())
    finally:
        job.kill()


@pytest.mark.integration
def test_ray_kill_stops_the_job(local_ray: None, tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=100_000, home=tmp_path / "job-home")
    job = RayExecutor().start(spec, workdir=tmp_path / "work")
    wait_for_event(events_path, is_step, STARTUP_SECONDS)

    job.kill()

    assert job.wait(180) == -9
    assert events_of(events_path)[-1]["type"] in ("log", "step")
