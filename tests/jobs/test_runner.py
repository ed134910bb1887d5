"""The job process: a real subprocess trains a tiny model and reports through its events file; bad specs,
SIGTERM and a dying parent end it the way the worker expects; `read_events` only hands out whole lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from lorafleet.adapters import load_adapter
from lorafleet.jobs.runner import (
    EXIT_BAD_SPEC,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    PARENT_PID_ENV,
    EventLog,
    cancel_request_file,
    read_events,
    run_spec,
)
from lorafleet.models import load_base
from tests.helpers import write_jsonl
from tests.training.conftest import JSON_ROWS, QA_ROWS

RUNNER = [sys.executable, "-m", "lorafleet.jobs.runner"]
# Job processes run on one thread, like the tests themselves.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
STARTUP_SECONDS = 120  # importing torch + transformers + peft takes seconds, more on a busy machine
# Held-out suites, as the worker writes them into a spec (paths beside the spec).
SUITE_A = {"id": "suite-a", "adapter": "records", "metric": "json_fields", "path": "suites/a.jsonl"}
SUITE_B = {"id": "suite-b", "adapter": "qa", "metric": "perplexity", "path": "suites/b.jsonl"}


def write_spec(
    folder: Path, tiny_dir: Path, *, steps: int, name: str = "job", home: Path | None = None, **extra: Any
) -> tuple[Path, Path]:
    """A job spec training the tiny llama `steps` steps on short QA rows; returns (spec, events path)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(folder / "qa.jsonl", QA_ROWS)
    config = {
        "model": {"name": str(tiny_dir)},
        "data": {"path": str(data), "max_length": 64},
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "training": {"batch_size": 4, "max_steps": steps, "learning_rate": 1e-2, "warmup_ratio": 0},
        "output": {"name": name},
    }
    spec: dict[str, Any] = {"config": config, "events": "events.jsonl", **extra}
    if home is not None:
        spec["home"] = str(home)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path, folder / "events.jsonl"


def events_of(path: Path) -> list[dict[str, Any]]:
    return read_events(path)[0]


def wait_for_event(path: Path, accept: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """The first event `accept`s (polling the file), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events_of(path):
            if accept(event):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no such event within {timeout}s; events: {events_of(path)}")


def is_step(event: dict[str, Any]) -> bool:
    return event["type"] == "step"


def is_started(event: dict[str, Any]) -> bool:
    return event["type"] == "started"


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- a job that succeeds -------------------------------------------------------------------------------


def test_job_process_trains_and_reports_every_step(tmp_path: Path, tiny_dir: Path) -> None:
    home = tmp_path / "job-home"
    spec, events_path = write_spec(tmp_path / "job", tiny_dir, steps=3, home=home)

    done = subprocess.run(
        [*RUNNER, str(spec)], env=os.environ | ONE_THREAD, capture_output=True, timeout=STARTUP_SECONDS
    )

    assert done.returncode == EXIT_OK, done.stderr.decode()[-2000:]
    events = events_of(events_path)
    kinds = [event["type"] for event in events]
    assert (
        kinds[0] == "started"
        and isinstance(events[0]["pid"], int)
        and events[0]["host"] == socket.gethostname()
    )
    assert "log" in kinds[1:-1]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    assert not {"error", "cancelled"} & set(kinds)
    steps = [event for event in events if event["type"] == "step"]
    assert [event["step"] for event in steps] == [1, 2, 3]
    assert all(event["total_steps"] == 3 for event in steps)
    assert all(
        isinstance(event["metrics"]["loss"], float) and "step" not in event["metrics"] for event in steps
    )
    assert all(isinstance(event["time"], float) for event in events)

    result = events[-1]
    assert Path(result["adapter_dir"]) == home / "adapters" / "job"
    assert Path(result["run_dir"]) == home / "runs" / "job"
    assert result["summary"]["steps"] == 3
    base, _ = load_base(str(tiny_dir), device="cpu")
    load_adapter(base, result["adapter_dir"])  # a complete PEFT adapter of this base


# --- bad specs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"training": {"max_steps": 0}}, "training.max_steps"),
        ({"lora": {"rank": 4}}, "lora.rank"),
        ({"output": {"name": "../escape"}}, "output.name"),
    ],
)
def test_bad_config_is_an_error_event_naming_the_field(
    tmp_path: Path, tiny_dir: Path, change: dict[str, Any], needle: str
) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=2)
    values = json.loads(spec.read_text())
    for section, fields in change.items():
        values["config"][section] = fields
    spec.write_text(json.dumps(values))

    assert run_spec(spec) == EXIT_BAD_SPEC

    events = events_of(events_path)
    assert [event["type"] for event in events] == ["started", "error"]
    assert needle in events[-1]["message"]


def test_missing_data_file_exits_2_before_training(tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=2)
    (tmp_path / "qa.jsonl").unlink()

    assert run_spec(spec) == EXIT_BAD_SPEC

    error = events_of(events_path)[-1]
    assert error["type"] == "error" and "qa.jsonl" in error["message"]


def test_training_failure_is_an_error_event_and_exit_1(
    tmp_path: Path, tiny_dir: Path, lorafleet_home: Path
) -> None:
    home = tmp_path / "job-home"
    (home / "adapters" / "job").mkdir(parents=True)  # an adapter of that name exists, no overwrite
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=2, home=home)

    assert run_spec(spec) == EXIT_FAILED

    error = events_of(events_path)[-1]
    assert error["type"] == "error" and "exists" in error["message"]
    assert os.environ["LORAFLEET_HOME"] == str(lorafleet_home)  # the job's home is not left behind


def test_bad_spec_file_exits_2_from_the_process(tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=2, resume="yes")

    done = subprocess.run([*RUNNER, str(spec)], env=os.environ | ONE_THREAD, capture_output=True, timeout=60)

    assert done.returncode == EXIT_BAD_SPEC
    error = events_of(events_path)[-1]
    assert error["type"] == "error" and "'resume' must be a boolean" in error["message"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"config": {}}', "'events' must be a path"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_spec_without_an_events_file_reports_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(text)

    assert run_spec(spec) == EXIT_BAD_SPEC

    message = capsys.readouterr().err
    assert message.startswith("error: ") and str(spec) in message and needle in message


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"priority": 5}, "unknown key 'priority'"),
        ({"home": ""}, "'home' must be a path"),
        ({"probe": "no"}, "'probe' must be a boolean"),
        ({"suites": {"id": "suite-a"}}, "'suites' must be a JSON array"),
        ({"suites": [{"id": "suite-a", "path": "a.jsonl"}]}, "suites[0] must be an object with exactly"),
        ({"suites": [{"id": "s", "adapter": "t", "metric": "exact_match", "path": 3}]}, "suites[0].path"),
        ({"suites": [SUITE_A, SUITE_A]}, "id 'suite-a' appears twice"),
    ],
)
def test_bad_spec_key_is_named(tmp_path: Path, tiny_dir: Path, extra: dict[str, Any], needle: str) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=2, **extra)

    assert run_spec(spec) == EXIT_BAD_SPEC
    assert needle in events_of(events_path)[-1]["message"]


# --- scoring the trained adapter on suites and the general probe ----------------------------------------


def write_suites(folder: Path, b_rows: list[dict[str, Any]] | None = None) -> None:
    (folder / "suites").mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "suites" / "a.jsonl", JSON_ROWS[:4])
    write_jsonl(folder / "suites" / "b.jsonl", QA_ROWS[:4] if b_rows is None else b_rows)


def spec_with_suites(folder: Path, tiny_dir: Path, **extra: Any) -> tuple[Path, Path]:
    """A 2-step job whose adapter is scored on two suites (json_fields, perplexity), generating little."""
    write_suites(folder)
    spec, events_path = write_spec(folder, tiny_dir, steps=2, suites=[SUITE_A, SUITE_B], **extra)
    values = json.loads(spec.read_text())
    values["config"]["eval"] = {"max_new_tokens": 8, "batch_size": 4}
    spec.write_text(json.dumps(values))
    return spec, events_path


def test_the_result_carries_suite_scores_and_the_general_probe(tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = spec_with_suites(tmp_path, tiny_dir)

    assert run_spec(spec) == EXIT_OK

    events = events_of(events_path)
    logs = [event["message"] for event in events if event["type"] == "log"]
    assert "scoring the version on 2 suites and the general probe" in logs
    summary = events[-1]["summary"]
    evaluation = summary["evaluation"]
    assert "adapter" in evaluation  # the run's own evaluation stays beside the suites
    assert list(evaluation["suites"]) == ["suite-a", "suite-b"]
    a, b = evaluation["suites"]["suite-a"], evaluation["suites"]["suite-b"]
    assert (a["adapter"], a["metric"], b["adapter"], b["metric"]) == (
        "records",
        "json_fields",
        "qa",
        "perplexity",
    )
    assert a["score"] == a["details"]["field_accuracy"] and a["details"]["rows"] == 4
    assert b["score"] == 1 / b["details"]["perplexity"] and b["details"]["rows"] == 4
    general = evaluation["general"]
    assert set(general) == {"perplexity", "base_perplexity", "drift"}
    assert general["drift"] == pytest.approx(general["perplexity"] / general["base_perplexity"] - 1)
    assert json.loads((Path(events[-1]["run_dir"]) / "summary.json").read_text())["evaluation"] == evaluation


def test_probe_false_and_no_suites_scores_nothing(tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=1, probe=False)

    assert run_spec(spec) == EXIT_OK

    events = events_of(events_path)
    assert not any("scoring the version" in event.get("message", "") for event in events)
    assert not {"suites", "general"} & set(events[-1]["summary"]["evaluation"])


def test_a_bad_suite_row_fails_the_job_before_training(tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = spec_with_suites(tmp_path, tiny_dir)
    write_suites(tmp_path, b_rows=[QA_ROWS[0], {"prompt": "q1", "completion": 5}])

    assert run_spec(spec) == EXIT_BAD_SPEC

    events = events_of(events_path)
    assert [event["type"] for event in events] == ["started", "error"]
    message = events[-1]["message"]
    assert message.startswith("suite suite-b (adapter qa): ") and "b.jsonl:2" in message


def test_an_unknown_suite_metric_fails_the_job_naming_it(tmp_path: Path, tiny_dir: Path) -> None:
    write_suites(tmp_path)
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=2, suites=[SUITE_A | {"metric": "bleu"}])

    assert run_spec(spec) == EXIT_BAD_SPEC
    assert "suite suite-a" in (message := events_of(events_path)[-1]["message"]) and "'bleu'" in message


def test_a_scoring_failure_fails_the_job_naming_the_suite(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lorafleet.evaluation import suites

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(suites, "score_suite", broken)
    spec, events_path = spec_with_suites(tmp_path, tiny_dir, probe=False)

    assert run_spec(spec) == EXIT_FAILED

    events = events_of(events_path)
    assert "result" not in [event["type"] for event in events]
    assert (
        events[-1]["message"]
        == "suite suite-a (adapter records): scoring failed: RuntimeError: out of memory"
    )


def test_a_cancel_request_while_scoring_cancels_the_job(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lorafleet.evaluation import suites

    spec, events_path = spec_with_suites(tmp_path, tiny_dir)
    evaluate_task = suites.evaluate_task

    def cancel_then_score(*args: Any, **kwargs: Any) -> Any:
        cancel_request_file(spec).touch()  # asked to stop once the first suite is being generated
        return evaluate_task(*args, **kwargs)

    monkeypatch.setattr(suites, "evaluate_task", cancel_then_score)

    assert run_spec(spec) == EXIT_CANCELLED

    cancelled = events_of(events_path)[-1]
    assert cancelled["type"] == "cancelled" and "while scoring" in cancelled["message"]


# --- cancel and kill ------------------------------------------------------------------------------------


def test_sigterm_checkpoints_and_exits_3(tmp_path: Path, tiny_dir: Path) -> None:
    home = tmp_path / "job-home"
    spec, events_path = write_spec(tmp_path / "job", tiny_dir, steps=100_000, home=home)
    process = subprocess.Popen(
        [*RUNNER, str(spec)], env=os.environ | ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_event(events_path, is_step, STARTUP_SECONDS)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == EXIT_CANCELLED, stderr.decode()[-2000:]
    events = events_of(events_path)
    kinds = [event["type"] for event in events]
    assert kinds[-1] == "cancelled" and "result" not in kinds and "error" not in kinds
    last_step = max(event["step"] for event in events if event["type"] == "step")
    assert f"step {last_step}" in events[-1]["message"]
    assert list((home / "runs" / "job" / "checkpoints").iterdir())  # resumable
    assert not (home / "adapters" / "job").exists()


def test_a_cancel_request_file_stops_the_job_at_its_next_step(tmp_path: Path, tiny_dir: Path) -> None:
    home = tmp_path / "job-home"
    spec, events_path = write_spec(tmp_path / "job", tiny_dir, steps=100_000, home=home)
    process = subprocess.Popen([*RUNNER, str(spec)], env=os.environ | ONE_THREAD, stderr=subprocess.PIPE)
    try:
        wait_for_event(events_path, is_step, STARTUP_SECONDS)
        cancel_request_file(spec).touch()
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()

    assert process.returncode == EXIT_CANCELLED, stderr.decode()[-2000:]
    assert events_of(events_path)[-1]["type"] == "cancelled"
    assert list((home / "runs" / "job" / "checkpoints").iterdir())


def test_sigterm_before_training_is_still_cancelled(tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=100_000)
    process = subprocess.Popen([*RUNNER, str(spec)], env=os.environ | ONE_THREAD, stderr=subprocess.DEVNULL)
    try:
        wait_for_event(events_path, is_started, STARTUP_SECONDS)  # still importing torch
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == EXIT_CANCELLED
    finally:
        process.kill()

    cancelled = events_of(events_path)[-1]
    assert cancelled["type"] == "cancelled" and "no checkpoint" in cancelled["message"]


PARENT = """
import sys, time
from pathlib import Path
from lorafleet.jobs.executors import LocalExecutor

job = LocalExecutor().start(Path(sys.argv[1]), workdir=Path(sys.argv[2]))
print(job.pid, flush=True)
time.sleep(600)
"""


def test_job_process_dies_with_its_parent(tmp_path: Path, tiny_dir: Path) -> None:
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=100_000)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(spec), str(tmp_path / "work")],
        env=os.environ | ONE_THREAD,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    runner = int(parent.stdout.readline())
    try:
        wait_for_event(events_path, is_started, STARTUP_SECONDS)  # PR_SET_PDEATHSIG is set by then
        parent.kill()
        parent.wait()

        deadline = time.monotonic() + 10
        while not gone(runner) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(runner)
    finally:
        parent.kill()
        if not gone(runner):
            os.kill(runner, signal.SIGKILL)


def test_job_whose_parent_already_died_does_not_start(tmp_path: Path, tiny_dir: Path) -> None:
    # The parent pid the executor names is not our parent: it died before the child could ask to die with it.
    spec, events_path = write_spec(tmp_path, tiny_dir, steps=2)
    env = os.environ | ONE_THREAD | {PARENT_PID_ENV: "1"}

    done = subprocess.run([*RUNNER, str(spec)], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == EXIT_FAILED
    assert "already exited" in done.stderr
    assert not events_path.exists()


# --- the events file ------------------------------------------------------------------------------------


def test_read_events_leaves_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert read_events(path, 0) == ([], 0)  # not written yet

    path.write_text('{"type": "log", "message": "a"}\n{"type": "step", "st')
    events, offset = read_events(path, 0)
    assert events == [{"type": "log", "message": "a"}]
    assert offset == len('{"type": "log", "message": "a"}\n')
    assert read_events(path, offset) == ([], offset)

    with path.open("a") as file:
        file.write('ep": 1}\n')
    events, offset = read_events(path, offset)
    assert events == [{"type": "step", "step": 1}]
    assert offset == path.stat().st_size


def test_events_are_strict_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit("step", step=1, total_steps=None, metrics={"loss": float("nan"), "grad_norm": float("inf")})
    log.emit("result", durable=True, adapter_dir=tmp_path, run_dir="r", summary={})
    log.close()

    lines = path.read_text().splitlines()
    step = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"{name} in {lines[0]}"))
    assert step["metrics"] == {"loss": None, "grad_norm": None}
    assert json.loads(lines[1])["adapter_dir"] == str(tmp_path)
