"""The bundled tasks together: reproducible held-out files, records of exactly the task's keys,
tasks that differ from each other, the support tickets unchanged by the refactor, and the CLI's `--task`."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest

from lorafleet.data.example_tasks import DEFAULT_TASK, TASKS, example_task
from lorafleet.data.task_generation import ExampleTask
from lorafleet.errors import ConfigError
from tests.helpers import assert_friendly_error, invoke

# sha256 of `lorafleet data example` (seed 0, 1000 + 200 rows) as main wrote it before the tasks shared code.
TICKETS_SEED_0 = {
    "train.jsonl": "59dc4433eb6b693ecd9f359f5dbaca8d4aeeb6535637426346244dad09746f88",
    "test.jsonl": "556588e59df150dd67f889c990ce54b5a9085986b2f82a454deedbec8e03a223",
}


def read_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module", params=list(TASKS))
def task(request: pytest.FixtureRequest) -> ExampleTask:
    return TASKS[request.param]


@pytest.fixture(scope="module")
def files(task: ExampleTask, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return task.write(tmp_path_factory.mktemp(task.name))


def test_the_registry_names_six_tasks_and_refuses_others() -> None:
    names = ["support_tickets", "invoices", "meeting_notes", "healthcare", "legal", "finance"]
    assert list(TASKS) == names and DEFAULT_TASK in TASKS
    assert all(name == task.name for name, task in TASKS.items())
    with pytest.raises(ConfigError, match=r"'bogus'.*" + ", ".join(names)):
        example_task("bogus")


def test_support_tickets_are_byte_identical_to_before(tmp_path: Path) -> None:
    for path in TASKS["support_tickets"].write(tmp_path):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == TICKETS_SEED_0[path.name], path.name


def test_same_seed_same_files_and_another_seed_other_files(task: ExampleTask, tmp_path: Path) -> None:
    first = task.write(tmp_path / "a", train_rows=60, test_rows=20, seed=3)
    again = task.write(tmp_path / "b", train_rows=60, test_rows=20, seed=3)
    other = task.write(tmp_path / "c", train_rows=60, test_rows=20, seed=4)

    for mine, same, different in zip(first, again, other, strict=True):
        assert mine.read_bytes() == same.read_bytes()
        assert mine.read_bytes() != different.read_bytes()


def test_sizes_and_every_completion_has_exactly_the_tasks_keys(
    task: ExampleTask, files: tuple[Path, Path]
) -> None:
    train, test = read_rows(files[0]), read_rows(files[1])

    assert [p.name for p in files] == ["train.jsonl", "test.jsonl"]
    assert (len(train), len(test)) == (1000, 200)
    assert all(key in task.instruction for key in task.fields)
    for row in train + test:
        assert set(row) == {"prompt", "completion"}
        assert row["prompt"].startswith(f"{task.instruction}\n\n")
        assert list(json.loads(row["completion"])) == list(task.fields)


def test_train_and_test_are_disjoint_without_repeats(task: ExampleTask, files: tuple[Path, Path]) -> None:
    train = [row["prompt"] for row in read_rows(files[0])]
    test = [row["prompt"] for row in read_rows(files[1])]

    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert set(train).isdisjoint(test)


def test_every_optional_field_is_sometimes_null_and_sometimes_set(
    task: ExampleTask, files: tuple[Path, Path]
) -> None:
    records = [json.loads(row["completion"]) for row in read_rows(files[0])]
    optional = {
        "support_tickets": ("order_id", "amount"),
        "invoices": ("currency", "due_date"),
        "meeting_notes": ("deadline",),
        "healthcare": ("follow_up",),
        "legal": ("deadline",),
        "finance": (),
    }

    for key in optional[task.name]:
        nulls = sum(record[key] is None for record in records)
        assert 50 <= nulls <= 400, (key, nulls)


def test_tasks_differ_in_keys_and_instruction() -> None:
    for one, other in itertools.combinations(TASKS.values(), 2):
        assert set(one.fields) != set(other.fields), (one.name, other.name)
        assert one.instruction != other.instruction


def test_cli_writes_each_task(tmp_path: Path) -> None:
    for name, task in TASKS.items():
        result = invoke("data", "example", str(tmp_path / name), "--task", name, "--train-rows", "4")
        assert result.exit_code == 0, (result.output, result.exception)
        rows = read_rows(tmp_path / name / "train.jsonl")
        assert len(rows) == 4 and len(read_rows(tmp_path / name / "test.jsonl")) == 200
        assert all(list(json.loads(row["completion"])) == list(task.fields) for row in rows)


def test_cli_defaults_to_the_support_tickets(tmp_path: Path) -> None:
    result = invoke("data", "example", str(tmp_path / "ex"))

    assert result.exit_code == 0, (result.output, result.exception)
    for name, digest in TICKETS_SEED_0.items():
        assert hashlib.sha256((tmp_path / "ex" / name).read_bytes()).hexdigest() == digest


def test_cli_help_lists_the_tasks_and_a_bad_task_is_one_error_line(tmp_path: Path) -> None:
    result = invoke("data", "example", "--help")
    help_text = " ".join(result.stdout.split())

    assert result.exit_code == 0
    assert all(name in help_text for name in TASKS)
    assert_friendly_error(
        invoke("data", "example", str(tmp_path / "x"), "--task", "recipes"), "'recipes'", *TASKS
    )
    assert not (tmp_path / "x").exists()
