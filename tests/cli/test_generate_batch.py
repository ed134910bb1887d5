"""`lorafleet generate --input rows.jsonl`: mixed-adapter batches in, one JSON result per row out, and
bad rows named by FILE:LINE before anything is generated."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from lorafleet.adapters import LoraSettings, attach, save_adapter
from lorafleet.models import tiny_model
from tests.helpers import invoke


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    """Two random adapters of different ranks for the tiny llama."""
    base, _ = tiny_model("llama")
    paths = {}
    for seed, (name, rank) in enumerate({"alpha": 4, "beta": 8}.items()):
        torch.manual_seed(seed)
        settings = LoraSettings(r=rank, target_modules=["q_proj", "v_proj"], init="random")
        paths[name] = save_adapter(attach(copy.deepcopy(base), settings), tmp_path / name)
    return paths


def write_rows(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(f"{row if isinstance(row, str) else json.dumps(row)}\n" for row in rows))
    return path


def adapter_options(adapters: dict[str, Path]) -> list[str]:
    return [arg for name, path in adapters.items() for arg in ("--adapter", f"{name}={path}")]


def test_rows_run_as_mixed_batches_in_input_order(
    tiny_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    rows = [
        {"prompt": "hello", "adapter": "alpha"},
        {"prompt": "good morning", "adapter": None, "max_tokens": 3, "ignore_eos": True},
        {"prompt": "hello", "adapter": "beta", "ignore_eos": True},
        {"prompt": "bye", "adapter": "alpha", "temperature": 0.8, "seed": 3},
    ]
    source = write_rows(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = invoke(
        "generate", "--model", str(tiny_dir), *adapter_options(adapters),
        "--input", str(source), "--output", str(out), "--max-tokens", "5", "--max-batch", "2",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "wrote 4 results" in result.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["adapter"]) for r in results] == [(row["prompt"], row["adapter"]) for row in rows]
    assert set(results[0]) == {
        "prompt", "adapter", "text", "prompt_tokens", "completion_tokens", "finish_reason", "error",
    }  # fmt: skip
    assert [r["completion_tokens"] for r in results[1:3]] == [3, 5]  # the row's max_tokens wins
    assert all(r["error"] is None and r["prompt_tokens"] > 0 for r in results)


def test_a_batch_row_gives_what_the_single_prompt_path_streams(
    tiny_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    source = write_rows(tmp_path / "rows.jsonl", [{"prompt": "hi", "adapter": "beta"}, {"prompt": "hi"}])

    batch = invoke(
        "generate", "--model", str(tiny_dir), *adapter_options(adapters),
        "--input", str(source), "--max-tokens", "6", "--no-chat",
    )  # fmt: skip
    single = invoke(
        "generate", "--model", str(tiny_dir), "--adapter", f"beta={adapters['beta']}",
        "--max-tokens", "6", "--no-chat", "hi",
    )  # fmt: skip

    assert batch.exit_code == 0 and single.exit_code == 0, (batch.output, single.output)
    first = json.loads(batch.stdout.splitlines()[0])
    assert first["text"] == single.stdout.removesuffix("\n")


def test_a_failing_adapter_is_reported_in_its_row(
    tiny_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    other, _ = tiny_model("llama", seed=1)  # another base: its adapter is refused when loaded
    alien = save_adapter(attach(other, LoraSettings(r=4, target_modules=["q_proj"])), tmp_path / "alien")
    source = write_rows(tmp_path / "rows.jsonl", [{"prompt": "a", "adapter": "alien"}, {"prompt": "b"}])

    result = invoke(
        "generate", "--model", str(tiny_dir), "--adapter", f"alien={alien}",
        "--input", str(source), "--max-tokens", "2",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    failed, fine = (json.loads(line) for line in result.stdout.splitlines())
    assert failed["finish_reason"] == "error" and "trained on base" in failed["error"]
    assert fine["error"] is None and fine["completion_tokens"] > 0
    assert "(1 failed)" in result.stderr


@pytest.mark.parametrize(
    ("rows", "line", "needle"),
    [
        ([{"prompt": "ok"}, "{not json"], 2, "not valid JSON"),
        ([{"prompt": "ok"}, "", {"adapter": "alpha"}], 3, "'prompt' must be a string"),
        ([{"prompt": "ok", "temperature": -1}], 1, "temperature"),
        ([{"prompt": "ok", "colour": "red"}], 1, "colour"),
        ([{"prompt": "ok"}, {"prompt": "x", "adapter": "nobody"}], 2, "'nobody'"),
        ([["a", "list"]], 1, "JSON object"),
    ],
    ids=["json", "prompt", "range", "unknown-field", "unknown-adapter", "not-object"],
)
def test_a_bad_row_names_its_file_and_line(
    rows: list[object], line: int, needle: str, adapters: dict[str, Path], tmp_path: Path
) -> None:
    source = write_rows(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = invoke(
        "generate", "--model", "/not/loaded/before/rows/are/checked", *adapter_options(adapters),
        "--input", str(source), "--output", str(out),
    )  # fmt: skip

    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith(f"error: {source}:{line}: "), message
    assert needle in message and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--adapter", "a=x", "--adapter", "b=y", "hi"], "one prompt takes one"),
        (["--input", "rows.jsonl", "hi"], "not both"),
        ([], "give a PROMPT"),
        (["--adapter", "a=", "--input", "rows.jsonl"], "NAME=PATH"),
    ],
)
def test_usage_errors(args: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "rows.jsonl", [{"prompt": "hi"}])

    result = invoke("generate", "--model", "/unused", *args)

    assert result.exit_code == 2 and needle in result.stderr, result.output
