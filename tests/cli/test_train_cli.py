"""`lorafleet train`, `eval`, `chat` and `estimate` through Typer's `CliRunner`, on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.errors import TrainingInterrupted
from tests.helpers import assert_friendly_error, invoke, write_jsonl

QA_ROWS = [{"prompt": f"q{i % 4}", "completion": f"answer {i % 4}"} for i in range(8)]
JSON_ROWS = [{"prompt": f"id {i}", "completion": json.dumps({"n": i})} for i in range(4)]
QUICK = ("--set", "data.max_length=64", "--set", "lora.r=4", "--set", "lora.target_modules=[q_proj]")


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)


# --- train -----------------------------------------------------------------------------------------------


def test_train_prints_the_table_the_adapter_and_how_to_chat(
    tiny_dir: Path, qa_file: Path, lorafleet_home: Path
) -> None:
    result = invoke(
        "train", "--model", str(tiny_dir), "--data", str(qa_file), "-o", "cli", "--max-steps", "2",
        "--no-progress", *QUICK,
    )  # fmt: skip

    assert result.exit_code == 0, (result.output, result.exception)
    adapter = lorafleet_home / "adapters" / "cli"
    run_dir = lorafleet_home / "runs" / "cli"
    assert (adapter / "adapter_model.safetensors").is_file()
    out = result.stdout
    assert "held-out evaluation" in out and "validation loss" in out and "adapter" in out
    assert f"adapter:    {adapter}\n" in out
    assert f"summary:    {run_dir / 'summary.json'}\n" in out
    assert f"loss curve: {run_dir / 'loss.png'}\n" in out
    assert "trained 2 steps" in out
    assert f"lorafleet chat --model {tiny_dir} --adapter cli\n" in out
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2


def test_train_from_a_recipe_with_flags_and_sets_on_top(
    tiny_dir: Path, qa_file: Path, tmp_path: Path, lorafleet_home: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"# lorafleet train {recipe}\nmodel:\n  name: {tiny_dir}\ndata:\n  path: {qa_file}\n"
        "training:\n  max_steps: 50\n  learning_rate: 1.0e-3\noutput:\n  name: from-recipe\n"
    )

    result = invoke(
        "train", str(recipe), "--max-steps", "1", "--learning-rate", "1e-2", "--no-progress", *QUICK
    )

    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads((lorafleet_home / "runs" / "from-recipe" / "summary.json").read_text())
    assert summary["steps"] == 1
    card = json.loads((lorafleet_home / "adapters" / "from-recipe" / "lorafleet.json").read_text())
    assert card["training"]["training"]["learning_rate"] == 1e-2
    assert card["training"]["lora"]["target_modules"] == ["q_proj"]


def test_a_scrubbing_run_records_its_report_in_the_adapter_card(
    tiny_dir: Path, tmp_path: Path, lorafleet_home: Path
) -> None:
    note = "Patient Ingmar Solveigsdottir (MRN: 88120044), call 617-555-0134."
    rows = [{"prompt": note, "completion": json.dumps({"patient": "Ingmar Solveigsdottir"})}] * 4
    data = write_jsonl(tmp_path / "notes.jsonl", rows)
    result = invoke(
        "train", "--model", str(tiny_dir), "--data", str(data), "-o", "notes", "--max-steps", "1",
        "--no-progress", *QUICK, "--set", "data.max_length=128", "--set", "data.scrub=true",
    )  # fmt: skip

    assert result.exit_code == 0, (result.output, result.exception)
    card = json.loads((lorafleet_home / "adapters" / "notes" / "lorafleet.json").read_text())
    scrub = card["metrics"]["data_scrub"]
    (report_file,) = (lorafleet_home / "scrubbed").glob("*/notes.scrub.json")
    report = json.loads(report_file.read_text())
    assert scrub == {
        "file": str(data),
        "rows": 4,
        "found": report["found"],
        "unscrubbed": {},
        "head": report["head"],
    }
    assert report["found"]["MEDICAL_RECORD_NUMBER"] == 4
    assert f"audit head {report['head']}" in result.stdout
    assert "Solveigsdottir" not in json.dumps(card)


def test_train_with_an_unknown_set_key_names_it(tiny_dir: Path, qa_file: Path) -> None:
    result = invoke(
        "train", "--model", str(tiny_dir), "--data", str(qa_file), "--set", "training.learnin_rate=1e-4"
    )

    assert_friendly_error(result, "training.learnin_rate")


def test_train_with_an_out_of_range_flag_names_the_key(tiny_dir: Path, qa_file: Path) -> None:
    result = invoke("train", "--model", str(tiny_dir), "--data", str(qa_file), "--learning-rate", "-1")

    assert_friendly_error(result, "training.learning_rate")


def test_train_flags_are_taken_literally(tiny_dir: Path, qa_file: Path, lorafleet_home: Path) -> None:
    # "2025" and "yes" are numbers and booleans in YAML, but as --output they are adapter names.
    for name in ("2025", "yes"):
        (lorafleet_home / "adapters" / name).mkdir(parents=True)

        result = invoke("train", "--model", str(tiny_dir), "--data", str(qa_file), "--output", name)

        assert_friendly_error(result, f"adapter '{name}' exists")


def test_train_refuses_an_existing_adapter(tiny_dir: Path, qa_file: Path, random_adapter: Path) -> None:
    result = invoke("train", "--model", str(tiny_dir), "--data", str(qa_file), "-o", "rand")

    assert_friendly_error(result, str(random_adapter), "--overwrite")


def test_train_resume_without_a_checkpoint(tiny_dir: Path, qa_file: Path) -> None:
    result = invoke("train", "--model", str(tiny_dir), "--data", str(qa_file), "--resume")

    assert_friendly_error(result, "no checkpoint to resume")


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (("--data", "{bad_file}"), "{bad_file}:1"),  # fails reading the data
        (("--data", "{qa_file}", "--set", "lora.target_modules=[nope]"), "'nope'"),  # fails attaching LoRA
    ],
)
def test_a_failed_overwrite_leaves_the_earlier_run_resumable(
    tiny_dir: Path, qa_file: Path, tmp_path: Path, lorafleet_home: Path, bad: tuple[str, ...], named: str
) -> None:
    bad_file = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a completion is missing"}])
    paths = {"bad_file": str(bad_file), "qa_file": str(qa_file)}
    common = ("--model", str(tiny_dir), "-o", "acc-keep", "--no-progress", *QUICK)
    common += ("--set", "training.checkpoint_steps=1")
    first = invoke("train", *common, "--data", str(qa_file), "--max-steps", "2")
    assert first.exit_code == 0, (first.output, first.exception)
    run_dir, adapter = lorafleet_home / "runs" / "acc-keep", lorafleet_home / "adapters" / "acc-keep"
    earlier = _files(run_dir) | _files(adapter)
    assert any("checkpoints/step-000001" in name for name in earlier)

    failed = invoke("train", *common, "--max-steps", "2", "--overwrite", *(a.format(**paths) for a in bad))

    assert_friendly_error(failed, named.format(**paths))
    assert len(failed.stderr.strip().splitlines()) == 1
    assert _files(run_dir) | _files(adapter) == earlier  # checkpoints, summary, adapter: untouched
    resumed = invoke("train", *common, "--data", str(qa_file), "--max-steps", "3", "--resume", "--overwrite")
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    assert "resumed from step 1" in resumed.stdout
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its path, with its contents."""
    return {str(path): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_train_interrupted_says_how_to_resume(
    tiny_dir: Path, qa_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise TrainingInterrupted("interrupted at step 3; continue with `lorafleet train ... --resume`")

    monkeypatch.setattr("lorafleet.training.train", interrupted)

    result = invoke("train", "--model", str(tiny_dir), "--data", str(qa_file))

    assert_friendly_error(result, "interrupted at step 3", "--resume")


def test_train_with_a_missing_recipe(tmp_path: Path) -> None:
    assert_friendly_error(invoke("train", str(tmp_path / "absent.yaml")), "absent.yaml", "no such recipe")


# --- eval, chat, estimate --------------------------------------------------------------------------------


def test_eval_prints_base_and_adapter_columns(tiny_dir: Path, qa_file: Path, random_adapter: Path) -> None:
    result = invoke("eval", "--adapter", "rand", "--data", str(qa_file), "--model", str(tiny_dir))

    assert result.exit_code == 0, (result.output, result.exception)
    header = next(line for line in result.stdout.splitlines() if "measure" in line)
    assert header.index("base") < header.index("adapter")
    assert "validation loss" in result.stdout and "perplexity" in result.stdout


def test_eval_json_with_the_task_metric(tiny_dir: Path, tmp_path: Path, random_adapter: Path) -> None:
    data = write_jsonl(tmp_path / "records.jsonl", JSON_ROWS)

    result = invoke(
        "eval", "-a", "rand", "--data", str(data), "-m", str(tiny_dir), "--metric", "json_fields",
        "--max-new-tokens", "6", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, (result.output, result.exception)
    scores = json.loads(result.stdout)
    assert set(scores) == {"base", "adapter"}
    assert scores["base"]["loss"] != scores["adapter"]["loss"]  # the random adapter changes the model
    for scored in scores.values():
        assert scored["task"]["rows"] == 4
        assert {"valid_json", "field_accuracy", "exact_match"} <= set(scored["task"])


def test_eval_rejects_an_unknown_metric(tiny_dir: Path, qa_file: Path, random_adapter: Path) -> None:
    result = invoke("eval", "-a", "rand", "--data", str(qa_file), "-m", str(tiny_dir), "--metric", "bleu")

    assert_friendly_error(result, "'bleu'", "json_fields")


def test_chat_runs_one_turn(tiny_dir: Path, random_adapter: Path) -> None:
    result = invoke(
        "chat", "--model", str(tiny_dir), "--adapter", "rand", "--max-tokens", "4", input="hi\n\n"
    )

    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.startswith("chat: type a message")
    assert result.stdout.count("> ") == 2  # one turn answered, then the empty line ends it


def test_chat_ends_on_end_of_input(tiny_dir: Path) -> None:
    result = invoke("chat", "--model", str(tiny_dir), "--max-tokens", "2", input="")

    assert result.exit_code == 0, (result.output, result.exception)


def test_chat_rejects_a_negative_temperature(tiny_dir: Path) -> None:
    assert_friendly_error(invoke("chat", "--model", str(tiny_dir), "--temperature", "-1"), "temperature")


@pytest.mark.parametrize("command", ["train", "eval", "chat", "estimate"])
def test_help(command: str) -> None:
    result = invoke(command, "--help")

    assert result.exit_code == 0, result.output
    assert f"Usage: lorafleet {command}" in result.stdout


# --- train --from a parent -------------------------------------------------------------------------------


def test_train_from_a_parent_names_it_in_the_lineage(
    tiny_dir: Path, qa_file: Path, random_adapter: Path, lorafleet_home: Path
) -> None:
    result = invoke(
        "train", "--model", str(tiny_dir), "--data", str(qa_file), "-o", "child", "--from", "rand",
        "--max-steps", "1", "--no-progress", *QUICK[:2],
    )  # fmt: skip

    assert result.exit_code == 0, (result.output, result.exception)
    assert f"starting from parent {random_adapter}" in result.stdout
    card = json.loads((lorafleet_home / "adapters" / "child" / "lorafleet.json").read_text())
    assert card["lineage"] == {
        "parents": [str(random_adapter)],
        "method": "continual:none",
        "weights": None,
        "details": None,
    }


def test_train_from_a_parent_of_another_base_fails_in_one_line(
    tiny_dir: Path, qa_file: Path, lorafleet_home: Path
) -> None:
    from lorafleet.models import tiny_model
    from tests.helpers import save_random_adapter

    other, _ = tiny_model("llama", hidden_size=48, seed=1)
    save_random_adapter(other, lorafleet_home / "adapters" / "other")

    result = invoke(
        "train", "--model", str(tiny_dir), "--data", str(qa_file), "-o", "child", "--from", "other"
    )

    assert_friendly_error(result, "other was trained on base")
    assert not (lorafleet_home / "adapters" / "child").exists()
    assert not (lorafleet_home / "runs" / "child" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("parent", "needle"),
    [("nope", "unknown adapter 'nope'"), ("rand@2", "registry version"), ("./missing", "no directory")],
)
def test_train_from_an_unknown_parent_fails_in_one_line(
    tiny_dir: Path, qa_file: Path, random_adapter: Path, lorafleet_home: Path, parent: str, needle: str
) -> None:
    result = invoke(
        "train", "--model", str(tiny_dir), "--data", str(qa_file), "-o", "child", "--from", parent
    )

    assert_friendly_error(result, needle)
    assert not (lorafleet_home / "adapters" / "child").exists()


def test_train_orthogonal_from_a_merged_model_fails_in_one_line(
    tiny_dir: Path, qa_file: Path, lorafleet_home: Path
) -> None:
    from lorafleet.models import tiny_model

    merged, tokenizer = tiny_model("llama")
    merged.save_pretrained(lorafleet_home / "adapters" / "merged")  # a full HF model dir, as `merge` writes
    tokenizer.save_pretrained(lorafleet_home / "adapters" / "merged")

    result = invoke(
        "train", "--model", str(tiny_dir), "--data", str(qa_file), "-o", "child", "--from", "merged",
        "--set", "continual.strategy=orthogonal",
    )  # fmt: skip

    assert_friendly_error(result, "model.parent", "holds a full model", "not a LoRA adapter")
    assert not (lorafleet_home / "adapters" / "child").exists()
    assert not (lorafleet_home / "runs" / "child").exists()


def test_train_orthogonal_saves_the_served_sum(
    tiny_dir: Path, qa_file: Path, random_adapter: Path, lorafleet_home: Path
) -> None:
    result = invoke(
        "train", "--model", str(tiny_dir), "--data", str(qa_file), "-o", "child", "--from", "rand",
        "--set", "continual.strategy=orthogonal", "--max-steps", "1", "--no-progress", *QUICK[:2],
    )  # fmt: skip

    assert result.exit_code == 0, (result.output, result.exception)
    assert "strategy orthogonal: a new adapter r=4" in result.stdout
    card = json.loads((lorafleet_home / "adapters" / "child" / "lorafleet.json").read_text())
    lineage = {
        "parents": [str(random_adapter)],
        "method": "continual:orthogonal",
        "weights": None,
        "details": None,
    }
    assert card["lineage"] == lineage
    config = json.loads((lorafleet_home / "adapters" / "child" / "adapter_config.json").read_text())
    assert config["r"] == 8
